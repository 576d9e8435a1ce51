"""`pvpatch hints`: what a guest sees on the hint page."""
from __future__ import annotations

import json
import time

from . import args as cliargs
from ..errors import PvpatchError
from ..hints import abi
from ..hints.reader import HintReader, HintState


def describe(st: HintState) -> str:
    """Human-readable form of one observation."""
    j = st.to_json()
    if not st.valid:
        return (f"hint page {st.path}: {st.status}, no hints ({st.problem}); guests use the "
                "safe default")
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


def summary(st: HintState) -> str:
    """One line: what a guest acts on (printed by --watch at each change)."""
    if not st.valid:
        return f"{st.status}: {st.problem}; guests use the safe default"
    p = st.page
    hints = " ".join(abi.names(st.active_hints, abi.HINTS)) or "none"
    line = (f"{st.status}: hints {hints}, generation {p.generation}, publisher pid "
            f"{p.publisher_pid}, reason {abi.REASONS.get(p.reason, '?')}")
    if not st.usable:
        line += f"; {st.problem}; guests use the safe default"
    return line


def _key(st: HintState):
    """What a change is: anything a guest would act on or a person would want to know; not
    the heartbeat or the measurements, which move every interval."""
    p = st.page if st.valid else None
    return (st.status, st.problem.split(":")[0] if not st.valid else "",
            (p.generation, p.active_hints, p.state, p.publisher_pid) if p else None)


def _emit(args, st: HintState, what: str) -> None:
    if args.json:
        print(json.dumps(dict(st.to_json(), event=what)), flush=True)
    else:
        print(time.strftime("%H:%M:%S ") + (what + " " if what != "change" else "")
              + summary(st), flush=True)


def guest_report(path: str) -> tuple[str, dict]:
    """A guest agent's state from its metrics textfile (auto(metrics_textfile=...)): one line,
    and the values.  PvpatchError if the file cannot be read or is not a guest's."""
    from prometheus_client.parser import text_string_to_metric_families
    try:
        with open(path) as f:
            text = f.read()
        fams = {f.name: f for f in text_string_to_metric_families(text)}
    except OSError as e:
        raise PvpatchError(f"--guest {path}: {e.strerror}") from None
    except ValueError as e:
        raise PvpatchError(f"--guest {path}: not Prometheus text: {e}") from None
    if "pvpatch_guest_switches" not in fams:
        raise PvpatchError(f"--guest {path}: no pvpatch_guest_* metrics (written by "
                           "pvpatch.auto(metrics_textfile=...))")

    def one(name):
        return next((smp.value for smp in fams[name].samples
                     if not smp.name.endswith("_created")), None)
    v = {
        "in_force": {smp.labels["group"]: smp.labels["variant"]
                     for smp in fams["pvpatch_guest_variant"].samples if smp.value == 1},
        "page": next((smp.labels["status"] for smp in fams["pvpatch_guest_hint_page_status"]
                      .samples if smp.value == 1), "unknown"),
        "switches": int(one("pvpatch_guest_switches")),
        "refusals": int(one("pvpatch_guest_switch_refusals")),
        "retries": int(one("pvpatch_guest_switch_retries")),
        "pending": bool(one("pvpatch_guest_policy_mismatch")),
        "errors": {smp.labels["component"]: int(smp.value)
                   for smp in fams["pvpatch_guest_errors"].samples
                   if smp.name.endswith("_total") and smp.value},
        "latency_s": one("pvpatch_guest_reaction_latency_seconds"),
    }
    lat = v["latency_s"]
    line = (f"guest {path}: page {v['page']}, in force "
            f"{' '.join(f'{g}={x}' for g, x in v['in_force'].items()) or 'nothing yet'}"
            f"{' (switch pending or being retried)' if v['pending'] else ''}; "
            f"{v['switches']} switches, {v['refusals']} refused, {v['retries']} retries; "
            f"unexpected errors: "
            + (", ".join(f"{c} {n}" for c, n in v["errors"].items()) or "none")
            + ("" if lat is None or lat != lat else f"; last reaction {lat * 1e3:.2f} ms"))
    return line, v


def run(args) -> int:
    if args.count is not None and args.count < 1:
        raise PvpatchError(f"--count {args.count}: must be >= 1")
    if args.every is not None and not (0 < args.every < float("inf")):
        raise PvpatchError(f"--every {args.every}: must be > 0 seconds")
    if not (0 < args.poll < float("inf")):
        raise PvpatchError(f"--poll {args.poll}: must be > 0 seconds")
    if (args.every is not None or args.count is not None) and not args.watch:
        raise PvpatchError("--every and --count need --watch")
    if args.guest and args.watch:
        raise PvpatchError("--guest shows one report; it does not combine with --watch")
    try:
        reader = HintReader(args.hints_path, publisher_uid=args.publisher_uid)
    except ValueError as e:
        raise PvpatchError(f"--publisher-uid: {e}") from None
    with reader:
        if not args.watch:
            st = reader.read()
            guest = guest_report(args.guest) if args.guest else None
            if args.json:
                j = st.to_json()
                if guest:
                    j["guest"] = guest[1]
                print(json.dumps(j))
            else:
                print(describe(st))
                if guest:
                    print(guest[0])
            # Scripts and health checks: 0 only when guests would act on the page.
            return 0 if st.usable else 1
        # Watch: print the page when it changes (generation, hints, state, publisher, usable
        # or not and why), and with --every a heartbeat line that often; sleep on the
        # generation futex in between, waking to notice staleness.
        shown = 0
        last_key = None
        next_beat = time.monotonic() + args.every if args.every else float("inf")
        while args.count is None or shown < args.count:
            st = reader.read()
            key = _key(st)
            now = time.monotonic()
            if key != last_key:
                _emit(args, st, "change")
                shown += 1
                last_key = key
                if args.every:
                    next_beat = now + args.every
            elif now >= next_beat:
                _emit(args, st, "heartbeat")
                shown += 1
                next_beat = now + args.every
            timeout = max(0.001, min(next_beat, now + 3600) - now)
            if st.valid:
                p = st.page
                until_stale = (p.heartbeat_ns + p.stale_bound_ns() - time.monotonic_ns()) / 1e9
                if until_stale > 0:
                    timeout = min(timeout, until_stale + 0.001)
                if not st.usable:
                    timeout = min(timeout, args.poll)
                reader.wait(p.generation, timeout)
            else:
                reader.wait(None, min(timeout, args.poll))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("hints", help="show the hint page as a guest sees it",
                              description="Read the hint page read-only and show what a guest "
                                          "sees: validity, trust, staleness, hints, "
                                          "measurements.  Exits 1 when guests would not use "
                                          "it (missing, untrusted, invalid, stale, stopped).")
    p.add_argument("--hints-path", type=cliargs.nonempty("path"), default=abi.DEFAULT_PATH,
                   metavar="P",
                   help=f"hint page file (default {abi.DEFAULT_PATH})")
    p.add_argument("--publisher-uid", type=int, metavar="UID",
                   help="trust pages owned by UID too (root's and your own always are)")
    p.add_argument("--guest", metavar="FILE.prom",
                   help="also show a guest agent's state (variants in force, refused switches, "
                        "retries, unexpected errors) from its auto(metrics_textfile=...)")
    p.add_argument("--watch", action="store_true",
                   help="keep watching; print a line at each change")
    p.add_argument("--every", type=float, metavar="S",
                   help="with --watch: also print a heartbeat line every S seconds")
    p.add_argument("--json", action="store_true",
                   help="JSON (one object per line with --watch)")
    p.add_argument("--count", type=cliargs.integer(1, 10**9), metavar="N",
                   help="with --watch: stop after N reports")
    p.add_argument("--poll", type=cliargs.seconds(0.01, 3600), default=0.5, metavar="S",
                   help="with --watch: how often to look for a missing or invalid page "
                        "(default 0.5)")
    p.set_defaults(func=run)
