"""`pvpatch demo`: the whole system in about a minute, on this machine.

1. the sites: what the core's patchable call sites hold now;
2. live switching under fire: the selftest at nmi-level 3;
3. why it matters: the same lock, native and pv, with more writers than CPUs and with as many;
4. host hints: a host agent flips REALTIME, a guest running torture switches its locks itself.

Each step prints what it measured; the demo fails (exit 1) if any invariant broke.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter


def _h(title: str) -> None:
    print(f"\n== {title}", flush=True)


def _sites() -> bool:
    import pvpatch
    from .extras import MissingExtra

    try:
        from .disasm import text
    except MissingExtra as exc:  # the demo runs without the extra; it only shows less
        print(f"(no disassembly: {exc})")

        def text(code: bytes, addr: int) -> str:
            return ""

    sites = pvpatch.registry.sites()
    kinds = Counter((s.group, s.kinds[pvpatch.registry.groups[s.group].current]) for s in sites)
    print(f"{len(sites)} runtime sites in {len(pvpatch.registry.modules)} module(s): "
          + ", ".join(f"{g} {k} x{n}" for (g, k), n in sorted(kinds.items())))
    unlock = next(s for s in sites if s.group == "lock" and s.op == "unlock")
    for v in ("native", "pv"):
        print(f"  lock.unlock at {unlock.addr:#x}, {v:>6}: {unlock.renderings[v].hex():<14} "
              f"{text(unlock.renderings[v], unlock.addr)}".rstrip())
    return True


def _selftest(seconds: float) -> bool:
    from . import selftest

    r = selftest.run(duration=seconds, nmi_level=3)
    print(f"{r.batches} batches ({r.sites_patched} sites) while {r.threads} threads made "
          f"{r.site_calls:,} site calls and handlers took {r.signals:,} signals")
    print(f"traps: {r.traps} handled, {r.traps_helped} emulated in the trapping thread, "
          f"{r.traps_on_patcher} on the patcher itself; failures: {r.failures}")
    return r.ok


def _torture(writers: int, seconds: float, mode: str = "toggle", hints_path=None,
             echo=lambda line: line.startswith("# hints")) -> tuple[bool, dict, int]:
    from .torture import Config, Torture, report

    lines: list[str] = []

    def out(line: str) -> None:
        lines.append(line)
        if echo(line):
            print(line, flush=True)

    cfg = Config(writers=writers, duration=seconds, stat_interval=1.0, mode=mode,
                 toggle_every=1.0, hints_path=hints_path)
    res = Torture(cfg, out=out).run()
    report(res, lambda line: out(line) if not line.startswith("End") else None)
    for reason in res.reasons:
        print(f"torture FAILED: {reason}")
    return res.success, res.rates, res.switches


def _ratio(rates: dict, a: str, b: str) -> str:
    from .torture import format_ratio
    ra, rb = rates.get(f"pvpatch {a}", 0.0), rates.get(f"pvpatch {b}", 0.0)
    return format_ratio(ra / rb) if rb else "n/a"


def _cpu_times() -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs from /proc/stat, or None where it cannot be read."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice, already in user/nice]
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def busy_note(load: float, cpus: int, steal_pct: float | None) -> str | None:
    """A note when the machine looks busy: more runnable tasks than CPUs on average, or time
    stolen by the hypervisor.  Ratios measured then swing with the load."""
    why = []
    if load > cpus:
        why.append(f"load average {load:.1f} on {cpus} CPUs")
    if steal_pct is not None and steal_pct >= 2.0:
        why.append(f"{steal_pct:.0f}% of CPU time stolen by the hypervisor")
    if not why:
        return None
    return ("note: this machine looks busy (" + ", ".join(why) + "); the rates above were "
            "measured anyway and swing with the load")


def _locks(seconds: float) -> bool:
    cpus = os.cpu_count() or 1
    over, under = 4 * cpus, cpus
    t0 = _cpu_times()
    ok1, r1, n1 = _torture(over, seconds)
    print(f"{over} writers on {cpus} CPUs: native {r1.get('pvpatch native', 0):>14,.0f}/s   "
          f"pv {r1.get('pvpatch pv', 0):>14,.0f}/s   pv/native {_ratio(r1, 'pv', 'native')}")
    ok2, r2, n2 = _torture(under, seconds)
    print(f"{under} writers on {cpus} CPUs: native {r2.get('pvpatch native', 0):>14,.0f}/s   "
          f"pv {r2.get('pvpatch pv', 0):>14,.0f}/s   native/pv {_ratio(r2, 'native', 'pv')}")
    t1 = _cpu_times()
    steal = (100.0 * (t1[0] - t0[0]) / (t1[1] - t0[1])
             if t0 and t1 and t1[1] > t0[1] else None)
    # The load average as the demo started: later, it counts the demo's own threads.
    note = busy_note(_load_at_start[0], cpus, steal)
    if note:
        print(note)
    if ok1 and ok2:
        print(f"(native and pv alternate every second within each run: {n1} and {n2} live "
              f"switches of a lock in use, no mutual-exclusion failure, no lost wake-up)")
    return ok1 and ok2


def _hints(seconds: float) -> bool:
    flip = seconds / 3
    with tempfile.TemporaryDirectory(prefix="pvpatch-demo-") as d:
        page = os.path.join(d, "hints")
        timeline = f"0:realtime,{flip:g}:oversubscribed,{2 * flip:g}:realtime"
        print(f"hostd --simulate {timeline}; the guest runs torture --mode auto")
        hostd = subprocess.Popen([sys.executable, "-m", "pvpatch.cli", "hostd", "--path", page,
                                  "--interval", "0.2", "--simulate", timeline],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while not os.path.exists(page) or os.path.getsize(page) == 0:
                if hostd.poll() is not None or time.monotonic() > deadline:
                    print("hostd did not start")
                    return False
                time.sleep(0.05)
            ok, _, _ = _torture(2 * (os.cpu_count() or 1), seconds + 1, mode="auto",
                                hints_path=page)
        finally:
            hostd.send_signal(signal.SIGTERM)
            try:
                hostd.wait(10)
            except subprocess.TimeoutExpired:
                hostd.kill()
    return ok


_load_at_start = [0.0]


def run(quick: bool = False) -> int:
    import pvpatch  # noqa: F401  (registers the core)

    _load_at_start[0] = os.getloadavg()[0]
    t = 2.0 if quick else 4.0
    steps = [("1. the sites", _sites, ()),
             ("2. switching under fire: selftest --nmi-level 3", _selftest, (t,)),
             ("3. the same lock, native and pv, switched live", _locks, (2 * t,)),
             ("4. host hints: hostd flips REALTIME, the guest follows", _hints, (3 * t,))]
    failed = []
    for title, fn, args in steps:
        _h(title)
        if not fn(*args):
            failed.append(title)
    print()
    if failed:
        print("pvpatch demo: FAILED in " + "; ".join(failed))
        return 1
    print("pvpatch demo: every invariant held (no torn site, no failure, no lost wake-up)")
    return 0
