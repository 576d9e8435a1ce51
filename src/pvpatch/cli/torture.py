"""`pvpatch torture`: locktorture for pvpatch's locks, with live variant switching."""
from __future__ import annotations

import os
import threading

from .. import extras, torture

from . import args as cliargs


def _printer():
    """print, flushed; when the reader of stdout goes away (`pvpatch torture | head`), the
    main thread's print raises BrokenPipeError, which ends the run through its cleanup (writers
    stopped, the variant restored) and then the command quietly; a print from the watchdog
    thread is dropped instead, so that no thread dies with a traceback."""
    def out(line: str) -> None:
        try:
            print(line, flush=True)
        except BrokenPipeError:
            if threading.current_thread() is threading.main_thread():
                raise
    return out


def run(args) -> int:
    import pvpatch  # noqa: F401  (registers the core)

    if args.plot and not extras.available("matplotlib"):  # before the run, not after it
        raise extras.MissingExtra(extras.hint("matplotlib", "torture --plot"))
    cfg = torture.Config(writers=args.writers, duration=args.duration,
                         stat_interval=args.stat_interval, mode=args.mode,
                         toggle_every=args.toggle_every, hold_ns=args.hold_ns,
                         locks=[k.strip() for k in args.lock.split(",") if k.strip()],
                         stall_timeout=args.stall_timeout, hints_path=args.hints_path,
                         pv_spin=args.pv_spin, rescue=args.rescue, quiet=args.quiet)
    out = _printer()
    t = torture.Torture(cfg, out=out, hard_exit_on_hang=True)
    c = t.config
    out(f"# pvpatch torture: {c.writers} writers on {os.cpu_count()} CPUs, "
        f"{c.duration:g} s, hold {c.hold_ns} ns, configurations: "
        f"{', '.join(torture.config_name(x) for x in c.configs())}"
        + (f", each {c.toggle_every:g} s in turn" if len(c.configs()) > 1 else ""))
    out(torture.params_line(c, "Start of test"))
    res = t.run()
    torture.report(res, out, c)
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
                    "Prints locktorture's statistics line every --stat-interval (one per "
                    "lock) and its 'End of test: SUCCESS' or 'FAILURE' line; exits 1 on "
                    "failure (a violation, a lost wake-up, a lost update or a stall, which also "
                    "dumps the state).")
    p.add_argument("--writers", type=cliargs.integer(0, 1024, zero="0: 2 x online CPUs"),
                   default=0, metavar="N",
                   help="writer threads (default: 2 x online CPUs, as locktorture)")
    p.add_argument("--duration", type=cliargs.seconds(0, 7 * 86400, lo_open=True), default=10.0,
                   metavar="S",
                   help="seconds (default 10)")
    p.add_argument("--stat-interval", type=cliargs.seconds(0.05, 3600), default=1.0, metavar="S",
                   help="seconds between statistics lines (default 1)")
    p.add_argument("--mode", default="toggle", metavar="MODE",
                   help="pvpatch lock variant: native, pv, toggle (native and pv in turn) or "
                        "auto (host hints decide) (default toggle)")
    p.add_argument("--toggle-every", type=cliargs.seconds(0.01, 3600), default=1.0, metavar="S",
                   help="seconds per configuration when there are several (default 1)")
    p.add_argument("--hold-ns", type=cliargs.integer(0, 10**10), default=0, metavar="N",
                   help="critical-section length in ns, at most 10 s (default 0)")
    p.add_argument("--lock", default="pvpatch", metavar="LOCK[,LOCK...]",
                   help=f"the lock(s): {', '.join(torture.KINDS)}; several are measured in "
                        f"turn, side by side (default pvpatch)")
    p.add_argument("--json", type=cliargs.output_file(), metavar="FILE",
                   help="write config, intervals, rates and ratios as JSON (checked writable "
                        "before the run)")
    p.add_argument("--plot", type=cliargs.output_file(*torture.PLOT_FORMATS),
                   metavar="FILE.png|FILE.svg",
                   help="plot writes per second, one series per configuration (needs "
                        "pvpatch[plot])")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no '# toggle' or '# lock' line per switch (the count is in the "
                        "summary)")
    p.add_argument("--stall-timeout", type=cliargs.seconds(0.1, 3600), default=10.0, metavar="S",
                   help="no acquisition for this long is a stall: state dump, exit 1 "
                        "(default 10)")
    p.add_argument("--hints-path", type=cliargs.nonempty("path"), metavar="P", default=None,
                   help="--mode auto: the hint page to follow (default: the path hostd uses, "
                        "/run/pvpatch/hints)")
    p.add_argument("--pv-spin", type=cliargs.integer(0, 1 << 24), metavar="N",
                   help="pv waiters spin N pauses before sleeping (default: the library's)")
    p.add_argument("--rescue", type=cliargs.seconds(0.001, 3600), metavar="S",
                   help="a sleeper re-checks after S s; finding its wake-up lost fails the run "
                        "(default 2)")
    p.set_defaults(func=run)
