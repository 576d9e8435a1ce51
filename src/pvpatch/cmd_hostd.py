"""`pvpatch hostd`: the host agent that publishes the hint page.

SIGTERM and SIGINT (and the end of --duration) stop it cleanly: the page is marked stopped, with
no hints, and guests are woken so that they fall back to the safe default at once.  The file stays
(guests see "stopped" rather than "missing"; the next hostd reuses it in place, so guests that
keep it mapped follow the new publisher).  A hostd that dies without stopping (SIGKILL, a crash)
leaves a page that goes stale: guests fall back after the staleness bound.
"""
from __future__ import annotations

import argparse
import signal

from . import cliargs
from .errors import PvpatchError
from .hints import abi
from .hints.publisher import Hostd, parse_timeline


def _fmt_measurements(page: abi.HintPage) -> str:
    m = page.measurements()

    def pct(v):
        return "?" if v is None else f"{v:.2f}%"
    quota = m["cgroup_quota_cpus"]
    quota = "?" if quota is None else "none" if quota == 0 else f"{quota:g} CPUs"
    run = "?" if m["runnable"] is None else m["runnable"]
    cpus = "?" if m["online_cpus"] is None else m["online_cpus"]
    return (f"runnable {run}/{cpus} CPUs, steal {pct(m['steal_pct'])}, "
            f"psi {pct(m['psi_some_avg10_pct'])}, quota {quota}, "
            f"throttled {pct(m['cgroup_throttled_pct'])}")


def run(args) -> int:
    if args.interval <= 0:
        raise PvpatchError(f"--interval {args.interval}: must be > 0")
    if args.duration is not None and args.duration < 0:
        raise PvpatchError(f"--duration {args.duration}: must be >= 0")
    timeline = parse_timeline(args.simulate) if args.simulate else None
    t0 = [None]

    def announce(page: abi.HintPage) -> None:
        # Printed at the first publication: by then the page is ours (a second hostd fails
        # before this) and the metrics server has its port.
        print(f"pvpatch hostd: publishing {hostd.publisher.path} every {args.interval:g} s "
              f"(pid {page.publisher_pid})"
              + (f", simulating {args.simulate}" if timeline else ""), flush=True)
        for s in hostd.sources:
            print(f"pvpatch hostd: source {s.describe()}", flush=True)
        if hostd.metrics is not None:
            print(f"pvpatch hostd: metrics on http://127.0.0.1:{hostd.metrics.port}/metrics",
                  flush=True)

    def on_publish(page: abi.HintPage, moved: bool) -> None:
        if t0[0] is None:
            t0[0] = page.started_ns
            announce(page)
        if moved or args.verbose:
            hints = ",".join(abi.names(page.active_hints, abi.HINTS)) or "none"
            print(f"pvpatch hostd: t={(page.heartbeat_ns - t0[0]) / 1e9:.3f}s "
                  f"generation {page.generation} hints={hints} "
                  f"reason={abi.REASONS.get(page.reason)} ({_fmt_measurements(page)})",
                  flush=True)

    hostd = Hostd(args.path, args.interval, timeline=timeline, metrics_port=args.metrics_port,
                  on_publish=on_publish)
    old = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        old[sig] = signal.signal(sig, lambda *_: hostd.request_stop())
    try:
        hostd.run(args.duration)
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
    page = hostd.publisher.page
    print(f"pvpatch hostd: stopped; page marked stopped (generation {page.generation}, "
          f"{page.publications} publications)", flush=True)
    return 0


def _timeline(text: str) -> str:
    """--simulate is checked when the command line is read, not when hostd starts."""
    try:
        parse_timeline(text)
    except PvpatchError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--simulate: ")) from None
    return text


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "hostd", help="publish host hints (REALTIME) to the hint page",
        description="Measure this machine (runnable tasks vs CPUs, steal, PSI, cgroup quota, "
                    "hypervisor CPUID), decide with hysteresis whether threads here are "
                    "preempted, and publish the REALTIME hint to a shared page guests watch.")
    p.add_argument("--path", type=cliargs.nonempty("path"), default=abi.DEFAULT_PATH,
                   help=f"hint page file (default {abi.DEFAULT_PATH})")
    p.add_argument("--interval", type=cliargs.seconds(abi.MIN_INTERVAL_NS / 1e9,
                                                      abi.MAX_INTERVAL_NS / 1e9),
                   default=1.0, metavar="S",
                   help="sampling and heartbeat interval in seconds (default 1)")
    p.add_argument("--simulate", type=_timeline, metavar="TIMELINE",
                   help="override the decision: SECONDS:STATE,... with STATE realtime or "
                        "oversubscribed, e.g. 0:realtime,10:oversubscribed,20:realtime")
    p.add_argument("--metrics-port", type=cliargs.port, metavar="N",
                   help="serve Prometheus metrics on 127.0.0.1:N (0: pick a free port)")
    p.add_argument("--duration", type=cliargs.seconds(0, 10 * 365 * 86400), metavar="S",
                   help="stop after S seconds (default: run until SIGTERM/SIGINT)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print every publication, not only those that change the hints")
    p.set_defaults(func=run)
