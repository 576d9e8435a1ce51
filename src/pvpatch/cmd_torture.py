"""`pvpatch torture`: locktorture for pvpatch's locks, with live variant switching."""
from __future__ import annotations

import os

from . import torture


def run(args) -> int:
    import pvpatch  # noqa: F401  (registers the core)

    cfg = torture.Config(writers=args.writers, duration=args.duration,
                         stat_interval=args.stat_interval, mode=args.mode,
                         toggle_every=args.toggle_every, hold_ns=args.hold_ns,
                         locks=[k.strip() for k in args.lock.split(",") if k.strip()],
                         stall_timeout=args.stall_timeout, hints_path=args.hints_path,
                         pv_spin=args.pv_spin, rescue=args.rescue)
    for path, what in ((args.json, "--json"), (args.plot, "--plot")):
        d = os.path.dirname(os.path.abspath(path)) if path else None
        if d and not os.path.isdir(d):
            raise torture.TortureError(f"{what} {path}: directory {d} does not exist")
    if args.plot and not args.plot.endswith(".png"):
        raise torture.TortureError(f"--plot {args.plot}: give a .png file name")
    t = torture.Torture(cfg, hard_exit_on_hang=True)
    c = t.config
    print(f"# pvpatch torture: {c.writers} writers on {os.cpu_count()} CPUs, "
          f"{c.duration:g} s, hold {c.hold_ns} ns, configurations: "
          f"{', '.join(torture.config_name(x) for x in c.configs())}"
          + (f", each {c.toggle_every:g} s in turn" if len(c.configs()) > 1 else ""), flush=True)
    res = t.run()
    torture.report(res, lambda s: print(s, flush=True))
    if args.json:
        torture.write_json(res, args.json)
    if args.plot:
        torture.plot(res, args.plot)
    return 0 if res.success else 1


def register(sub) -> None:
    p = sub.add_parser(
        "torture", help="locktorture: writers hammer a lock while its variant is switched",
        description="Writer threads loop {lock; critical section that detects a second owner; "
                    "unlock} on one lock while pvpatch switches the lock's variant live.  "
                    "Prints locktorture's statistics line every --stat-interval and "
                    "'End of test: SUCCESS' or 'FAILURE'; exits 1 on failure (a violation, a "
                    "lost wake-up, a lost update or a stall, which also dumps the state).")
    p.add_argument("--writers", type=int, default=0, metavar="N",
                   help="writer threads (default: 2 x online CPUs, as locktorture)")
    p.add_argument("--duration", type=float, default=10.0, metavar="S",
                   help="seconds (default 10)")
    p.add_argument("--stat-interval", type=float, default=1.0, metavar="S",
                   help="seconds between statistics lines (default 1)")
    p.add_argument("--mode", default="toggle", metavar="MODE",
                   help="pvpatch lock variant: native, pv, toggle (native and pv in turn) or "
                        "auto (host hints decide) (default toggle)")
    p.add_argument("--toggle-every", type=float, default=1.0, metavar="S",
                   help="seconds per configuration when there are several (default 1)")
    p.add_argument("--hold-ns", type=int, default=0, metavar="N",
                   help="critical-section length in ns (default 0)")
    p.add_argument("--lock", default="pvpatch", metavar="LOCK[,LOCK...]",
                   help=f"the lock(s): {', '.join(torture.KINDS)}; several are measured in "
                        f"turn, side by side (default pvpatch)")
    p.add_argument("--json", metavar="FILE", help="write config, intervals and summary as JSON")
    p.add_argument("--plot", metavar="FILE.png",
                   help="plot writes per second with each configuration shaded")
    p.add_argument("--stall-timeout", type=float, default=10.0, metavar="S",
                   help="no acquisition for this long is a stall: state dump, exit 1 "
                        "(default 10)")
    p.add_argument("--hints-path", metavar="P", default=None,
                   help="--mode auto: the hint page to follow (default: the path hostd uses, "
                        "/run/pvpatch/hints)")
    p.add_argument("--pv-spin", type=int, metavar="N",
                   help="pv waiters spin N pauses before sleeping (default: the library's)")
    p.add_argument("--rescue", type=float, metavar="S",
                   help="a sleeper re-checks after S s; finding its wake-up lost fails the run "
                        "(default 2)")
    p.set_defaults(func=run)
