"""`pvpatch bench`: what switching costs.

patch: runtime_patch over generated sites (10 .. 10,000), whole call and the C batch alone, and
the syncs each batch took; with threads, also with idle threads and with busy threads trapping
on the sites being patched.  Each call's time waiting for a CPU (the scheduler's run delay) is
measured too: with more runnable threads than CPUs, "ran" (wall minus that wait) is what the
patcher itself took.  Other suites (hints) register themselves in SUITES.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

SIZES = (10, 100, 1000, 10000)
SUITES: dict[str, Callable[..., dict]] = {}


def suite(name: str):
    def deco(fn):
        SUITES[name] = fn
        return fn
    return deco


def _runq_wait_ns() -> int | None:
    """Time this thread has spent runnable but waiting for a CPU (the scheduler's run delay,
    /proc/thread-self/schedstat, second field), or None where the kernel does not say."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as f:
            return int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))]


_GENERATED: dict = {}  # group -> gen.Generated, kept so that busy threads can run its sites


@suite("patch")
def bench_patch(sizes=SIZES, repeat: int = 41, threads: int = 0, progress=None) -> dict:
    """runtime_patch over `sizes` generated sites, `repeat` times each.  With `threads`, each
    size is measured three ways, side by side: alone, with `threads` idle threads in the
    process, and with `threads` busy threads calling the group's sites (so trapping on them)."""
    import os

    import pvpatch
    from . import _core, gen

    if threads < 0:
        raise ValueError(f"threads must be >= 0, not {threads}")
    loads = [("alone", 0, 0)] + ([("idle", 0, threads), ("busy", threads, 0)] if threads else [])
    # The writer path decides the syncs of a call -> call batch (docs/protocol.md).
    res = {"suite": "patch", "writer": _core.writer_status()["path"], "cpus": os.cpu_count(),
           "loadavg": list(os.getloadavg()), "threads": threads, "rows": []}
    for n in sizes:
        group = f"bench{n}"
        if group not in pvpatch.registry.groups:
            g = gen.generate(n, length=6, group=group)
            pvpatch.register_desc(g.desc, text=g.text)
            _GENERATED[group] = g
        for load, busy, idle in loads:
            fns = _GENERATED[group].functions if busy else []
            wall, batch, waited, syncs, traps = [], [], [], set(), 0
            if busy or idle:
                _core.bench_threads_start(fns, busy, idle)
            flips0 = _core.trap_counters()["atomic_flips"]
            try:
                for i in range(repeat):
                    variant = ("pv", "alt", "native")[i % 3]
                    w0 = _runq_wait_ns()
                    t0 = time.perf_counter()
                    ev = pvpatch.runtime_patch({group: variant})
                    wall.append(time.perf_counter() - t0)
                    w1 = _runq_wait_ns()
                    if w0 is not None and w1 is not None:
                        waited.append((w1 - w0) / 1e9)
                    batch.append(sum(ev.batch_ns) / 1e9)
                    syncs.add(ev.syncs)
                    traps += ev.traps
            finally:
                bt = _core.bench_threads_stop() if busy or idle else {"calls": 0, "failures": 0}
            flips = _core.trap_counters()["atomic_flips"] - flips0
            pvpatch.runtime_patch({group: "native"})
            row = {"sites": n, "load": load, "threads": busy + idle, "repeat": repeat,
                   "median_ms": statistics.median(wall) * 1e3, "p90_ms": _pct(wall, 0.9) * 1e3,
                   "p99_ms": _pct(wall, 0.99) * 1e3, "min_ms": min(wall) * 1e3,
                   "batch_median_ms": statistics.median(batch) * 1e3,
                   "batch_p99_ms": _pct(batch, 0.99) * 1e3,
                   "syncs_per_batch": sorted(syncs), "traps_per_batch": traps / repeat,
                   "atomic_flips_per_batch": flips / repeat,
                   "busy_calls": bt["calls"], "busy_failures": bt["failures"]}
            if len(waited) == len(wall):
                # How much of each call was spent waiting for a CPU (runnable, not running):
                # with more runnable threads than CPUs, that is the scheduler's share of the
                # tail, not the patcher's.  Both per call, so their difference is exact.
                ran = [w - q for w, q in zip(wall, waited)]
                row.update({"runq_wait_median_ms": statistics.median(waited) * 1e3,
                            "runq_wait_p99_ms": _pct(waited, 0.99) * 1e3,
                            "running_median_ms": statistics.median(ran) * 1e3,
                            "running_p99_ms": _pct(ran, 0.99) * 1e3})
            res["rows"].append(row)
            if progress:
                progress(row)
    res["loadavg_after"] = list(os.getloadavg())
    return res


def format_patch(res: dict) -> str:
    out = [f"writer: {res.get('writer', '?')}"]
    if "cpus" in res:
        out.append(f"{res['cpus']} CPUs, load average {res['loadavg'][0]:.2f} at start, "
                   f"{res['loadavg_after'][0]:.2f} at end")
    out.append(f"{'sites':>7} {'load':>11} {'median ms':>10} {'p99 ms':>9} {'min ms':>9} "
               f"{'C batch ms':>11} {'syncs/batch':>12} {'traps/batch':>12} "
               f"{'flips/batch':>12} {'ran p99 ms':>11}")
    for r in res["rows"]:
        load = r.get("load", "alone")
        if r.get("threads"):
            load = f"{r['threads']} {load}"
        out.append(f"{r['sites']:>7} {load:>11} {r['median_ms']:>10.3f} "
                   f"{r.get('p99_ms', r['p90_ms']):>9.3f} {r['min_ms']:>9.3f} "
                   f"{r['batch_median_ms']:>11.3f} "
                   f"{','.join(map(str, r['syncs_per_batch'])):>12} "
                   f"{r.get('traps_per_batch', 0):>12.1f} "
                   f"{r.get('atomic_flips_per_batch', 0):>12.1f} "
                   + (f"{r['running_p99_ms']:>11.3f}" if "running_p99_ms" in r else f"{'-':>11}"))
        if r.get("busy_failures"):
            out.append(f"        FAILURES: {r['busy_failures']} wrong results in "
                       f"{r['busy_calls']} site calls")
    return "\n".join(out)


FORMATTERS: dict[str, Callable[[dict], str]] = {"patch": format_patch}


@suite("hints")
def bench_hints(samples: int = 300, spacing_s: float = 0.01, progress=None) -> dict:
    """Publication -> guest notified, and publication -> switch complete, in a second process
    (the sampling interval of hostd is not counted: the publisher publishes on demand)."""
    from .hints import latency

    rows = []
    for mode in ("notify", "switch"):
        r = latency.measure(samples=samples, spacing_s=spacing_s, mode=mode)
        rows.append(r)
        if progress:
            progress(r)
    return {"suite": "hints", "rows": rows}


def format_hints(res: dict) -> str:
    out = [f"{'publication ->':<22} {'group':<9} {'samples':>7} {'p50 ms':>8} {'p99 ms':>8} "
           f"{'max ms':>8}"]
    for r in res["rows"]:
        if r["mode"] == "switch" and r.get("seen"):  # auto()'s agent thread, same switches
            s = r["seen"]
            out.append(f"{'agent notified (auto)':<22} {'-':<9} {r['measured']:>7} "
                       f"{s['p50_us'] / 1e3:>8.3f} {s['p99_us'] / 1e3:>8.3f} "
                       f"{s['max_us'] / 1e3:>8.3f}")
        what = "guest notified" if r["mode"] == "notify" else "switch complete"
        out.append(f"{what:<22} {r.get('group') or '-':<9} {r['measured']:>7} "
                   f"{r['p50_us'] / 1e3:>8.3f} {r['p99_us'] / 1e3:>8.3f} "
                   f"{r.get('max_us', float('nan')) / 1e3:>8.3f}")
    return "\n".join(out)


FORMATTERS["hints"] = format_hints
