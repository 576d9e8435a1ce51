"""Publication-to-notification and publication-to-switch latency, measured across processes.

The measuring process owns a hint page (a Publisher, no sampling: the sampling interval is not
part of the figure) and flips REALTIME `samples` times, `spacing_s` apart.  A separate guest
process follows the page:

  mode "notify": a Notifier; latency = seen_ns (the guest holds a consistent, validated snapshot
                 of the new generation) - changed_ns (the publisher moved the generation);
  mode "switch": pvpatch.auto() with runtime_patch on `group` (min dwell 0 so that every flip
                 switches); latency = done_ns (runtime_patch returned) - changed_ns.  The
                 same switches measured up to seen_ns (the agent thread, in C, holds the
                 validated snapshot) are reported as "seen".

Both clocks are CLOCK_MONOTONIC of one machine, so the differences are meaningful across the two
processes.  Generations that the guest coalesced (two flips before it looked) are not counted.

    python -m pvpatch.hints.latency [--samples N] [--spacing S] [--mode notify|switch]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import select
import subprocess
import sys
import tempfile
import threading
import time

from ..errors import PvpatchError
from . import abi
from .publisher import Publisher


def _pct(sorted_vals: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    return sorted_vals[max(0, math.ceil(q * len(sorted_vals)) - 1)]


def _readline(proc: subprocess.Popen, deadline: float) -> str:
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise PvpatchError("latency: the guest process did not answer in time")
        r, _, _ = select.select([proc.stdout], [], [], left)
        if r:
            line = proc.stdout.readline()
            if not line:
                raise PvpatchError(f"latency: the guest process exited "
                                   f"(status {proc.wait(5)}): {proc.stderr.read()[-2000:]}")
            return line


def default_group() -> str:
    from .. import registry
    return "lock" if "lock" in registry.groups else "selftest"


def measure(samples: int = 200, spacing_s: float = 0.01, mode: str = "notify",
            group: str | None = None, timeout_s: float = 60.0) -> dict:
    """Run the measurement; returns {mode, group, samples, measured, p50_us, p99_us, ...}."""
    if mode not in ("notify", "switch"):
        raise PvpatchError(f"latency: mode {mode!r} is not notify or switch")
    if samples < 1 or spacing_s <= 0:
        raise PvpatchError("latency: samples must be >= 1 and spacing > 0")
    if mode == "switch" and group is None:
        group = default_group()
    deadline = time.monotonic() + timeout_s
    with tempfile.TemporaryDirectory(prefix="pvpatch-latency-") as d:
        path = os.path.join(d, "hints")
        pub = Publisher(path, interval_s=1.0).open()
        cmd = [sys.executable, "-m", "pvpatch.hints.latency", "--child", path, "--mode", mode,
               "--samples", str(samples)] + (["--group", group] if group else [])
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            hints = 0
            pub.publish(hints, {}, abi.REASON_SIMULATED)
            if _readline(proc, deadline).strip() != "ready":
                raise PvpatchError("latency: unexpected first line from the guest process")
            for _ in range(samples):
                hints ^= abi.HINT_REALTIME
                pub.publish(hints, {}, abi.REASON_SIMULATED)
                time.sleep(spacing_s)
            pub.close()  # marks the page stopped: the child's last observation, then it exits
            out = json.loads(_readline(proc, deadline))
            proc.wait(max(1.0, deadline - time.monotonic()))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            pub.close(mark_stopped=False)
    lat = sorted(out["latencies_ns"])
    res = {"mode": mode, "group": group, "samples": samples, "spacing_s": spacing_s,
           "measured": len(lat), "errors": out.get("errors", [])}
    if lat:
        res.update(p50_us=_pct(lat, 0.50) / 1e3, p99_us=_pct(lat, 0.99) / 1e3,
                   max_us=lat[-1] / 1e3, min_us=lat[0] / 1e3)
    seen = sorted(out.get("seen_ns", []))
    if seen:  # the same switches, up to the agent's validated snapshot (its notification)
        res["seen"] = {"p50_us": _pct(seen, 0.50) / 1e3, "p99_us": _pct(seen, 0.99) / 1e3,
                       "max_us": seen[-1] / 1e3}
    res["command"] = (f"python -m pvpatch.hints.latency --mode {mode} --samples {samples} "
                      f"--spacing {spacing_s:g}" + (f" --group {group}" if group else ""))
    return res


def _child(path: str, mode: str, samples: int, group: str | None) -> int:
    """The guest process: follow the page, print "ready", then one JSON line at the end."""
    lat: list[int] = []
    seen: list[int] = []  # switch mode: publication -> the agent holds the snapshot
    errors: list[str] = []
    done = threading.Event()
    ready = threading.Event()
    seen_gens: set[int] = set()

    if mode == "notify":
        from .subscriber import Notifier

        def cb(st):
            if st.valid and st.page.state == abi.STATE_STOPPED:
                done.set()
                return
            if not st.usable:
                return
            if not ready.is_set():
                seen_gens.add(st.page.generation)
                ready.set()
                return
            if st.page.generation not in seen_gens:
                seen_gens.add(st.page.generation)
                lat.append(st.seen_ns - st.page.changed_ns)
        handle = Notifier(path, cb).start()
        stop = handle.stop
    else:
        from .guest import auto

        def on_event(ev):
            if ev.error:
                errors.append(ev.error)
            elif ev.published_ns is not None and ev.generation not in seen_gens:
                seen_gens.add(ev.generation)
                if ready.is_set():
                    lat.append(ev.done_ns - ev.published_ns)
                    seen.append(ev.seen_ns - ev.published_ns)
            ready.set()
        handle = auto(path, groups={group: ("native", "pv")}, min_dwell_s=0.0,
                      on_event=on_event)
        stop = handle.stop

        def watch_stop():  # the stop publication may not change the variant: watch the state
            while not done.is_set():
                st = handle.state
                if st is not None and st.valid and st.page.state == abi.STATE_STOPPED:
                    done.set()
                time.sleep(0.01)
        threading.Thread(target=watch_stop, daemon=True).start()
    if not ready.wait(10):
        print(json.dumps({"latencies_ns": [], "errors": ["no first observation"]}))
        return 1
    print("ready", flush=True)
    done.wait(60)
    stop()
    print(json.dumps({"latencies_ns": lat, "seen_ns": seen, "errors": errors}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pvpatch.hints.latency",
                                 description="Measure hint publication-to-notification (or "
                                             "-to-switch) latency across processes.")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--spacing", type=float, default=0.01, metavar="S")
    ap.add_argument("--mode", choices=("notify", "switch"), default="notify")
    ap.add_argument("--group", help="group to switch in --mode switch (default lock if "
                                    "registered, else selftest)")
    ap.add_argument("--child", metavar="PATH", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        return _child(a.child, a.mode, a.samples, a.group)
    print(json.dumps(measure(a.samples, a.spacing, a.mode, a.group), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
