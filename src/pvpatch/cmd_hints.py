"""`pvpatch hints`: what a guest sees on the hint page."""
from __future__ import annotations

import json
import time

from . import cliargs
from .errors import PvpatchError
from .hints import abi
from .hints.reader import HintReader, HintState


def describe(st: HintState) -> str:
    """Human-readable form of one observation."""
    j = st.to_json()
    if not st.valid:
        return (f"hint page {st.path}: no hints ({st.problem}); guests use the safe default")
    p = st.page
    m = j["measurements"]
    head = (f"hint page {st.path}: valid, "
            + ("fresh" if not st.stale else "STALE" if p.state == abi.STATE_RUNNING else "stopped")
            + f" (age {j['age_s']:.3f} s, stale after {j['stale_after_s']:g} s)")
    if not st.usable:
        head += f"; {st.problem}; guests use the safe default"

    def pct(v):
        return "?" if v is None else f"{v:.2f}%"
    quota = m["cgroup_quota_cpus"]
    quota = "?" if quota is None else "none" if quota == 0 else f"{quota:g} CPUs"
    hv = m["hypervisor"]
    lines = [
        head,
        f"  publisher   pid {p.publisher_pid}, {j['state']}, generation {p.generation}, "
        f"{p.publications} publications, interval {j['interval_s']:g} s",
        f"  hints       active: {' '.join(j['active_hints']) or 'none'}   "
        f"ever: {' '.join(j['ever_hints']) or 'none'}   "
        f"in force for guests: {' '.join(j['effective_hints']) or 'none'}",
        f"  reason      {m['reason']}",
        f"  features    {' '.join(j['features']) or 'none'}",
        f"  measured    runnable {m['runnable'] if m['runnable'] is not None else '?'} / "
        f"{m['online_cpus'] if m['online_cpus'] is not None else '?'} CPUs, steal "
        f"{pct(m['steal_pct'])}, PSI some avg10 {pct(m['psi_some_avg10_pct'])}, cgroup quota "
        f"{quota}, throttled {pct(m['cgroup_throttled_pct'])}",
        f"  hypervisor  {hv['signature'] or 'none'}"
        + (f" (features {hv['features']:#x}, hints {hv['hints']:#x}, REALTIME "
           f"{'yes' if hv['realtime'] else 'no'})" if hv["signature"] else ""),
        f"  sources     {' '.join(m['sources']) or 'none'}",
    ]
    return "\n".join(lines)


def run(args) -> int:
    if args.count is not None and args.count < 1:
        raise PvpatchError(f"--count {args.count}: must be >= 1")
    with HintReader(args.hints_path) as reader:
        if not args.watch:
            st = reader.read()
            print(json.dumps(st.to_json()) if args.json else describe(st))
            return 0
        # Watch: print an observation whenever the page changes (seqcount), or turns usable or
        # not; sleep on the generation futex in between, waking to notice staleness.
        shown = 0
        last_key = None
        while args.count is None or shown < args.count:
            st = reader.read()
            key = (st.valid, st.stale, st.problem if not st.valid else "",
                   st.page.seqcount if st.valid else None)
            if key != last_key:
                if args.json:
                    print(json.dumps(st.to_json()), flush=True)
                else:
                    print(time.strftime("%H:%M:%S ") + describe(st), flush=True)
                shown += 1
                last_key = key
            if st.valid:
                p = st.page
                until_stale = (p.heartbeat_ns + p.stale_bound_ns() - time.monotonic_ns()) / 1e9
                timeout = min(p.interval_ns / 1e9, max(0.001, until_stale + 0.001))
                reader.wait(p.generation, timeout)
            else:
                reader.wait(None, args.poll)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("hints", help="show the hint page as a guest sees it",
                              description="Read the hint page read-only and show what a guest "
                                          "sees: validity, staleness, hints, measurements.")
    p.add_argument("--hints-path", type=cliargs.nonempty("path"), default=abi.DEFAULT_PATH,
                   metavar="P",
                   help=f"hint page file (default {abi.DEFAULT_PATH})")
    p.add_argument("--watch", action="store_true", help="keep watching; print every change")
    p.add_argument("--json", action="store_true",
                   help="JSON (one object per line with --watch)")
    p.add_argument("--count", type=cliargs.integer(1, 10**9), metavar="N",
                   help="with --watch: stop after N reports")
    p.add_argument("--poll", type=cliargs.seconds(0.01, 3600), default=0.5, metavar="S",
                   help="with --watch: how often to look for a missing or invalid page "
                        "(default 0.5)")
    p.set_defaults(func=run)
