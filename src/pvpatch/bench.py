"""`pvpatch bench`: what switching costs.

patch: runtime_patch over generated sites (10 .. 10,000), whole call and the C batch alone, and
the syncs each batch took.  Other suites (hints) register themselves in SUITES.
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


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))]


@suite("patch")
def bench_patch(sizes=SIZES, repeat: int = 41, progress=None) -> dict:
    import pvpatch
    from . import _core, gen

    rows = []
    for n in sizes:
        group = f"bench{n}"
        if group not in pvpatch.registry.groups:
            g = gen.generate(n, length=6, group=group)
            pvpatch.register_desc(g.desc, text=g.text)
        wall, batch, syncs = [], [], set()
        for i in range(repeat):
            variant = ("pv", "alt", "native")[i % 3]
            t0 = time.perf_counter()
            ev = pvpatch.runtime_patch({group: variant})
            wall.append(time.perf_counter() - t0)
            batch.append(sum(ev.batch_ns) / 1e9)
            syncs.add(ev.syncs)
        pvpatch.runtime_patch({group: "native"})
        row = {"sites": n, "repeat": repeat,
               "median_ms": statistics.median(wall) * 1e3, "p90_ms": _pct(wall, 0.9) * 1e3,
               "min_ms": min(wall) * 1e3,
               "batch_median_ms": statistics.median(batch) * 1e3,
               "syncs_per_batch": sorted(syncs)}
        rows.append(row)
        if progress:
            progress(row)
    # The writer path decides the syncs of a call -> call batch (docs/protocol.md).
    return {"suite": "patch", "writer": _core.writer_status()["path"], "rows": rows}


def format_patch(res: dict) -> str:
    out = [f"writer: {res.get('writer', '?')}",
           f"{'sites':>7} {'median ms':>10} {'p90 ms':>9} {'min ms':>9} {'C batch ms':>11} "
           f"{'syncs/batch':>12}"]
    for r in res["rows"]:
        out.append(f"{r['sites']:>7} {r['median_ms']:>10.3f} {r['p90_ms']:>9.3f} "
                   f"{r['min_ms']:>9.3f} {r['batch_median_ms']:>11.3f} "
                   f"{','.join(map(str, r['syncs_per_batch'])):>12}")
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
        what = "guest notified" if r["mode"] == "notify" else "switch complete"
        out.append(f"{what:<22} {r.get('group') or '-':<9} {r['measured']:>7} "
                   f"{r['p50_us'] / 1e3:>8.3f} {r['p99_us'] / 1e3:>8.3f} "
                   f"{r.get('max_us', float('nan')) / 1e3:>8.3f}")
    return "\n".join(out)


FORMATTERS["hints"] = format_hints
