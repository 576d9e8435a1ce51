"""`pvpatch selftest`."""
from __future__ import annotations

import json
import os
import sys

from .. import selftest

from . import args as cliargs


JSON_SCHEMA = 1  # --json; bumped when a field changes meaning
MAX_THREADS = 64  # the core's executor table (selftest.c)


def _progress(res, elapsed):
    print(f"  {elapsed:5.1f} s  batches {res.batches:7d}  site calls {res.site_calls:11d}  "
          f"signals {res.signals:8d}", file=sys.stderr)


def run(args) -> int:
    import pvpatch  # noqa: F401  (registers the core)

    sigblock = args.sigblock_thread or args.hostile
    fullmask = args.fullmask_handler or args.hostile
    if not args.json:
        extra = "".join([", a thread blocking all signals around site calls" if sigblock else "",
                         ", handler with a full mask" if fullmask else ""])
        print(f"pvpatch selftest: {args.duration:g} s, {args.threads} executor threads, "
              f"nmi-level {args.nmi_level}, signals at {args.signal_hz:g} Hz per thread{extra}",
              file=sys.stderr)
    res = selftest.run(duration=args.duration, threads=args.threads, nmi_level=args.nmi_level,
                       signal_hz=args.signal_hz, stall_timeout=args.stall_timeout,
                       progress=None if args.json else _progress, sigblock_thread=sigblock,
                       fullmask_handler=fullmask)
    if args.json:
        print(json.dumps({"schema": JSON_SCHEMA, **res.as_dict()}, indent=2))
    else:
        rows = [("batches", res.batches), ("sites patched", res.sites_patched),
                ("site calls", res.site_calls), ("  of which in handlers", res.handler_site_calls),
                ("traps handled", res.traps),
                ("  new instruction emulated (not the patcher)", res.traps_helped),
                ("  on the patcher itself", res.traps_on_patcher),
                ("  rewound: the site was already whole", res.stale_traps),
                ("signals delivered", res.signals),
                ("handler lock taken", res.handler_lock_taken),
                ("site calls with all signals blocked", res.sigblock_calls),
                ("handler runs with every other signal blocked", res.handler_runs_fullmask),
                ("  with SIGTRAP blocked too", res.handler_runs_sigtrap_blocked),
                ("failures", res.failures)]
        for name, value in rows:
            print(f"{name:<48} {value:>12}")
        for e in res.errors:
            print(f"error: {e}")
        print("selftest: " + ("PASS" if res.ok else "STALLED" if res.stalled else "FAIL"))
    return 0 if res.ok else 1


def register(sub) -> None:
    p = sub.add_parser("selftest", help="switch variants under load, signals included",
                       description="Executor threads run the selftest sites in tight loops "
                                   "while the patcher switches their variant continuously and "
                                   "an injector sends signals whose handlers run sites too.")
    p.add_argument("--duration", type=cliargs.seconds(0.1, 86400), default=10.0, metavar="S",
                   help="seconds of switching (default 10)")
    p.add_argument("--threads", type=cliargs.integer(1, MAX_THREADS),
                   default=min(MAX_THREADS, max(2, os.cpu_count() or 2)), metavar="N",
                   help=f"executor threads, 1..{MAX_THREADS} (default: online CPUs, at least 2)")
    p.add_argument("--nmi-level", type=int, default=1, choices=range(4), metavar="0-3",
                   help="0: handlers count; 1: they run sites; 2: and take a lock shared only "
                        "by handlers; 3: and hold it a moment (default 1)")
    p.add_argument("--signal-hz", type=cliargs.number(0, 100000), default=4000.0, metavar="HZ",
                   help="signals per second sent to each thread, 0 for none (default 4000)")
    p.add_argument("--stall-timeout", type=cliargs.seconds(0.1, 3600), default=10.0,
                   metavar="S", help="no progress for this long is a stall: state dumped, exit 1 "
                                     "(default 10)")
    p.add_argument("--sigblock-thread", action="store_true",
                   help="one more thread runs the sites with every signal blocked around the "
                        "calls (pthread_sigmask), in a loop")
    p.add_argument("--fullmask-handler", action="store_true",
                   help="install the signal handler that runs sites with a full mask "
                        "(sigfillset(&sa.sa_mask))")
    p.add_argument("--hostile", action="store_true", help="both of the above")
    p.add_argument("--json", action="store_true", help="the counters as one JSON object")
    p.set_defaults(func=run)
