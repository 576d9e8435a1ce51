"""Fallback and recovery times under faults of the publisher and its page, measured.

A real hostd process (`--simulate 0:realtime`) publishes; this process runs pvpatch.auto() on the
`selftest` group (dwell 0) and follows it to native.  Then, `rounds` times per fault:

  sigterm   hostd stops cleanly (page marked stopped); recovery: a new hostd
  sigkill   hostd dies; the page goes stale;          recovery: a new hostd
  sigstop   hostd freezes; the page goes stale;       recovery: SIGCONT
  truncate  the page is truncated to 0 under hostd;   recovery: hostd restores it
  delete    the page is unlinked under hostd;         recovery: hostd recreates it
  forge     another file (owned by nobody, REALTIME-less) is renamed over the page;
                                                      recovery: hostd puts its page back

fallback_ms: fault -> the guest's switch to pv complete (None: the guest never fell back, because
hostd repaired the page before the guest looked at it).  recovery_ms: start of the recovery ->
the guest back on native (for the page faults, from the fault: hostd recovers by itself).
repaired_ms (page faults): fault -> a reader at the path finds hostd's usable page again; guests
asleep on the futex do not look at the page in between, so they usually never fall back.

    python -m pvpatch.hints.faults [--rounds N] [--interval S]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from ..errors import PvpatchError
from . import abi

FAULTS = ("sigterm", "sigkill", "sigstop", "truncate", "delete", "forge")


def _hostd(path: str, interval_s: float) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "pvpatch.cli", "hostd", "--path", path,
                          "--interval", str(interval_s), "--simulate", "0:realtime"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    for line in p.stdout:  # the page is taken when it says so
        if "publishing" in line:
            return p
    raise PvpatchError(f"faults: hostd did not start (status {p.wait(10)})")


def _until(pred, timeout: float, what: str) -> float:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise PvpatchError(f"faults: timed out after {timeout} s waiting for {what}")
        time.sleep(0.001)
    return time.monotonic()


def _served(path: str, pid: int) -> bool:
    """A reader at the path finds a usable page from hostd `pid`."""
    from .reader import HintReader
    with HintReader(path) as r:
        st = r.read()
    return st.usable and st.page.publisher_pid == pid


def measure(rounds: int = 3, interval_s: float = 0.1, faults=FAULTS,
            timeout_s: float = 20.0) -> dict:
    from .guest import auto
    from .publisher import Publisher
    if rounds < 1 or not 0.001 <= interval_s <= 10:
        raise PvpatchError("faults: rounds must be >= 1 and interval in [0.001, 10] s")
    bad = [f for f in faults if f not in FAULTS]
    if bad:
        raise PvpatchError(f"faults: unknown fault(s) {bad}; known: {', '.join(FAULTS)}")
    import pvpatch
    before = pvpatch.current()["selftest"]
    out: dict = {"interval_s": interval_s, "rounds": rounds, "faults": {},
                 "command": f"python -m pvpatch.hints.faults --rounds {rounds} "
                            f"--interval {interval_s:g}"}
    with tempfile.TemporaryDirectory(prefix="pvpatch-faults-") as d:
        path = os.path.join(d, "hints")
        procs = [_hostd(path, interval_s)]
        handle = auto(path, groups={"selftest": ("native", "pv")}, min_dwell_s=0)

        def on(v):
            return lambda: handle.in_force.get("selftest") == v and handle.settled
        try:
            _until(on("native"), timeout_s, "native")
            for fault in faults:
                rows, repaired = [], []
                for i in range(rounds):
                    h = procs[-1]
                    n0 = len(handle.events)
                    t0 = time.monotonic()
                    if fault == "sigterm":
                        h.send_signal(signal.SIGTERM)
                    elif fault == "sigkill":
                        h.send_signal(signal.SIGKILL)
                    elif fault == "sigstop":
                        h.send_signal(signal.SIGSTOP)
                    elif fault == "truncate":
                        os.truncate(path, 0)
                    elif fault == "delete":
                        os.unlink(path)
                    elif fault == "forge":
                        f = os.path.join(d, f"forged{fault}{i}")
                        with Publisher(os.path.join(d, f"m{i}", "p"), interval_s=10.0) as m:
                            m.publish(0, {"online_cpus": 1}, abi.REASON_SIMULATED)
                            data = open(m.path, "rb").read()
                        with open(f, "wb") as fh:
                            fh.write(data)
                        if os.geteuid() == 0:
                            os.chown(f, 65534, 65534)
                        else:
                            os.chmod(f, 0o666)
                        os.rename(f, path)
                    fell = None
                    if fault in ("sigterm", "sigkill", "sigstop"):
                        fell = _until(on("pv"), timeout_s, f"{fault}: pv") - t0
                        if fault == "sigstop":
                            r0 = time.monotonic()
                            h.send_signal(signal.SIGCONT)
                        else:
                            h.wait(10)
                            r0 = time.monotonic()
                            procs.append(_hostd(path, interval_s))
                    else:
                        r0 = t0
                        repaired.append(_until(lambda: _served(path, procs[-1].pid), timeout_s,
                                               f"{fault}: the page repaired") - t0)
                    back = _until(on("native"), timeout_s, f"{fault}: native again") - r0
                    if fell is None and any(e.variants.get("selftest") == "pv"
                                            for e in handle.events[n0:]):
                        fell = next(e.done_ns for e in handle.events[n0:]
                                    if e.variants.get("selftest") == "pv") / 1e9 - t0
                    rows.append((fell, back))
                    time.sleep(3 * interval_s)  # let the page settle between rounds

                def stats(vals):
                    vals = [v * 1e3 for v in vals if v is not None]
                    return ({"median_ms": round(statistics.median(vals), 2),
                             "max_ms": round(max(vals), 2)} if vals else None)
                out["faults"][fault] = {"fallback": stats([r[0] for r in rows]),
                                        "fell_back": sum(r[0] is not None for r in rows),
                                        "recovery": stats([r[1] for r in rows])}
                if repaired:
                    out["faults"][fault]["repaired"] = stats(repaired)
        finally:
            handle.stop()
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGCONT)
                    p.send_signal(signal.SIGTERM)
                    try:
                        p.wait(10)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait(10)
                p.stdout.close()
            pvpatch.runtime_patch({"selftest": before})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pvpatch.hints.faults",
                                 description="Measure how fast a guest falls back and recovers "
                                             "when hostd or its page is hit.")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--interval", type=float, default=0.1, metavar="S")
    ap.add_argument("--fault", action="append", choices=FAULTS,
                    help="only this fault (repeatable; default all)")
    a = ap.parse_args(argv)
    try:
        print(json.dumps(measure(a.rounds, a.interval, tuple(a.fault or FAULTS)), indent=2))
    except PvpatchError as e:
        print(f"faults: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
