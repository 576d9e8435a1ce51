"""`pvpatch hostd`: the host agent that publishes the hint page.

SIGTERM and SIGINT (and the end of --duration) stop it cleanly: the page is marked stopped, with
no hints, and guests are woken so that they fall back to the safe default at once.  The file stays
(guests see "stopped" rather than "missing"; the next hostd reuses it in place, so guests that
keep it mapped follow the new publisher).  A hostd that dies without stopping (SIGKILL, a crash)
leaves a page that goes stale: guests fall back after the staleness bound.

Settings come from the defaults, then a TOML file (--config), then flags; examples/hostd/ has a
commented configuration and a systemd unit.
"""
from __future__ import annotations

import argparse
import math
import signal

from . import args as cliargs
from ..errors import PvpatchError
from ..hints import abi
from ..hints.metrics import DEFAULT_ADDR
from ..hints.publisher import Hostd, Thresholds, parse_timeline


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


# Settings a TOML file (--config) may give, with their types; flags override them.
CONFIG_KEYS = {"path": str, "interval": float, "metrics_port": int, "metrics_addr": str}
THRESHOLD_FLAGS = {
    "steal_enter": "steal share (%%) that counts as oversubscribed (default %(d)g)",
    "steal_leave": "steal share (%%) below which a sample is calm (default %(d)g)",
    "psi_enter": "PSI cpu some avg10 (%%) that counts as oversubscribed (default %(d)g)",
    "psi_leave": "PSI cpu some avg10 (%%) below which a sample is calm (default %(d)g)",
    "throttled_enter": "cgroup periods throttled (%%) that count as oversubscribed "
                       "(default %(d)g)",
    "throttled_leave": "cgroup periods throttled (%%) below which a sample is calm "
                       "(default %(d)g)",
    "runnable_per_cpu_enter": "runnable tasks per CPU above which a sample is oversubscribed "
                              "(default %(d)g)",
    "runnable_per_cpu_leave": "runnable tasks per CPU at or below which a sample is calm "
                              "(default %(d)g)",
    "enter_samples": "oversubscribed samples in a row that withdraw REALTIME (default %(d)d)",
    "leave_samples": "calm samples in a row that grant REALTIME (default %(d)d)",
}


def _number(v, typ, what: str):
    ok = (isinstance(v, int) and not isinstance(v, bool)) if typ is int else \
        (isinstance(v, (int, float)) and not isinstance(v, bool))
    if not ok:
        raise PvpatchError(f"{what}: {v!r} is not {'an integer' if typ is int else 'a number'}")
    return typ(v)


def load_config(path: str) -> tuple[dict, dict]:
    """(settings, thresholds) from a TOML file; PvpatchError names the file and the key."""
    import tomllib
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise PvpatchError(f"--config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise PvpatchError(f"--config {path}: not TOML: {e}") from None
    settings, thresholds = {}, {}
    for key, v in data.items():
        if key == "thresholds":
            if not isinstance(v, dict):
                raise PvpatchError(f"--config {path}: [thresholds] must be a table")
            for tk, tv in v.items():
                if tk not in Thresholds.fields():
                    raise PvpatchError(f"--config {path}: thresholds.{tk}: unknown; known: "
                                       + ", ".join(Thresholds.fields()))
                typ = int if tk.endswith("_samples") else float
                thresholds[tk] = _number(tv, typ, f"--config {path}: thresholds.{tk}")
        elif key in CONFIG_KEYS:
            typ = CONFIG_KEYS[key]
            if typ is str:
                if not isinstance(v, str) or not v:
                    raise PvpatchError(f"--config {path}: {key}: {v!r} is not a string")
                settings[key] = v
            else:
                settings[key] = _number(v, typ, f"--config {path}: {key}")
        else:
            raise PvpatchError(f"--config {path}: {key}: unknown key; known: "
                               + ", ".join([*CONFIG_KEYS, "[thresholds]"]))
    return settings, thresholds


def settings(args) -> tuple[dict, Thresholds]:
    """The effective settings: defaults < --config file < flags."""
    conf, th = load_config(args.config) if args.config else ({}, {})
    out = {"path": abi.DEFAULT_PATH, "interval": 1.0, "metrics_port": None,
           "metrics_addr": DEFAULT_ADDR}
    out.update(conf)
    for key in CONFIG_KEYS:
        v = getattr(args, key, None)
        if v is not None:
            out[key] = v
    for key in Thresholds.fields():
        v = getattr(args, key, None)
        if v is not None:
            th[key] = v
    t = Thresholds(**th).check()
    if not math.isfinite(out["interval"]) or out["interval"] <= 0:
        raise PvpatchError(f"--interval {out['interval']}: must be > 0")
    return out, t


def run(args) -> int:
    conf, thresholds = settings(args)
    if args.duration is not None and not (args.duration >= 0 and math.isfinite(args.duration)):
        raise PvpatchError(f"--duration {args.duration}: must be >= 0")
    timeline = parse_timeline(args.simulate) if args.simulate else None
    t0 = [None]
    interval = conf["interval"]

    def announce(page: abi.HintPage) -> None:
        # Printed at the first publication: by then the page is ours (a second hostd fails
        # before this) and the metrics server has its port.
        print(f"pvpatch hostd: publishing {hostd.publisher.path} every {interval:g} s "
              f"(pid {page.publisher_pid})"
              + (f", simulating {args.simulate}" if timeline else ""), flush=True)
        for s in hostd.sources:
            print(f"pvpatch hostd: source {s.describe()}", flush=True)
        if hostd.metrics_server is not None:
            print(f"pvpatch hostd: metrics on {hostd.metrics_server.url}", flush=True)

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

    def on_repair(kind: str, message: str) -> None:
        print(f"pvpatch hostd: {kind}: {message}", flush=True)

    hostd = Hostd(conf["path"], interval, timeline=timeline, thresholds=thresholds,
                  metrics_port=conf["metrics_port"], metrics_addr=conf["metrics_addr"],
                  on_publish=on_publish, on_repair=on_repair)
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
    p.add_argument("--config", metavar="FILE.toml",
                   help="settings and [thresholds] from a TOML file (examples/hostd/hostd.toml);"
                        " flags override it")
    p.add_argument("--path", type=cliargs.nonempty("path"), default=None,
                   help=f"hint page file (default {abi.DEFAULT_PATH}); its directory must be "
                        "writable by this user only")
    p.add_argument("--interval", type=cliargs.seconds(abi.MIN_INTERVAL_NS / 1e9,
                                                      abi.MAX_INTERVAL_NS / 1e9),
                   default=None, metavar="S",
                   help="sampling and heartbeat interval in seconds (default 1)")
    p.add_argument("--simulate", type=_timeline, metavar="TIMELINE",
                   help="override the decision: SECONDS:STATE,... with STATE realtime or "
                        "oversubscribed, e.g. 0:realtime,10:oversubscribed,20:realtime")
    p.add_argument("--metrics-port", type=cliargs.port, metavar="N",
                   help="serve Prometheus metrics on --metrics-addr:N (0: pick a free port)")
    p.add_argument("--metrics-addr", metavar="ADDR",
                   help=f"address the metrics server binds (default {DEFAULT_ADDR})")
    p.add_argument("--duration", type=cliargs.seconds(0, 10 * 365 * 86400), metavar="S",
                   help="stop after S seconds (default: run until SIGTERM/SIGINT)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print every publication, not only those that change the hints")
    defaults = Thresholds()
    for key, help_ in THRESHOLD_FLAGS.items():
        d = getattr(defaults, key)
        p.add_argument("--" + key.replace("_", "-"), type=type(d), metavar="N", default=None,
                       help=(help_ % {"d": d}).replace("%", "%%"))
    p.set_defaults(func=run)
