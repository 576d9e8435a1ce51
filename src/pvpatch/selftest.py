"""`pvpatch selftest`: switch the selftest group continuously while executor threads and signal
handlers run its sites, and count everything (the RFC's pv_selftest, in user space)."""
from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time
from dataclasses import dataclass, field

from . import _core, patcher
from .errors import PvpatchError, syscall_error

# native -> pv -> alt -> native: calls become inline templates, NOPs, longer and shorter
# renderings, and back, on sites of 6 to 15 bytes.
CYCLE = ("pv", "alt", "native")


@dataclass
class SelftestResult:
    duration_s: float
    threads: int
    nmi_level: int
    signal_hz: float
    sigblock_thread: bool = False
    fullmask_handler: bool = False
    batches: int = 0
    sites_patched: int = 0
    site_calls: int = 0
    traps: int = 0
    traps_helped: int = 0
    traps_on_patcher: int = 0
    stale_traps: int = 0
    slot_traps: int = 0
    signals: int = 0
    handler_site_calls: int = 0
    handler_lock_taken: int = 0
    sigblock_calls: int = 0
    handler_runs_fullmask: int = 0
    handler_runs_sigtrap_blocked: int = 0
    failures: int = 0
    stalled: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failures == 0 and not self.stalled

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["ok"] = self.ok
        return d


def _dump_state(reason: str, stream=sys.stderr) -> None:
    print(f"pvpatch selftest: STALL: {reason}", file=stream)
    try:
        print(f"  executors: {_core.selftest_stats()}", file=stream)
    except RuntimeError:
        pass
    print(f"  trap counters: {_core.trap_counters()}", file=stream)
    print(f"  groups: {patcher.current()}", file=stream)
    faulthandler.dump_traceback(file=stream, all_threads=True)


def run(duration: float = 10.0, threads: int | None = None, nmi_level: int = 1,
        signal_hz: float = 4000.0, hook_every: int = 5, stall_timeout: float = 10.0,
        progress=None, sigblock_thread: bool = False,
        fullmask_handler: bool = False) -> SelftestResult:
    """Run the selftest for `duration` seconds.  `progress(result)` is called about once a
    second.  Every wait is bounded: a stall (no executor progress, or a batch that does not
    return, for `stall_timeout` s) ends the run with `stalled` set and the state dumped.

    `sigblock_thread`: one more thread runs every site with all signals blocked around the
    calls, in a loop.  `fullmask_handler`: the signal handler that runs sites is installed with
    every signal in its mask.  Both ask for SIGTRAP blocked on a site (pvpatch keeps it out of
    masks set through the C library: docs/protocol.md, "SIGTRAP blocked")."""
    if not 0 <= nmi_level <= 3:
        raise PvpatchError(f"--nmi-level must be 0..3, not {nmi_level}")
    threads = threads or max(2, os.cpu_count() or 2)
    res = SelftestResult(duration, threads, nmi_level, signal_hz, bool(sigblock_thread),
                         bool(fullmask_handler))
    hook = _core.selftest_hook()
    traps0 = _core.trap_counters()
    start_variant = patcher.current()["selftest"]

    # The watchdog: if the patching loop itself stops returning, dump and exit non-zero.
    beat = [time.monotonic()]
    done = threading.Event()

    def watchdog():
        while not done.wait(0.5):
            if time.monotonic() - beat[0] > stall_timeout:
                _dump_state(f"the patching loop made no progress for {stall_timeout:.0f} s")
                os._exit(3)

    wd = threading.Thread(target=watchdog, name="pvpatch-selftest-watchdog", daemon=True)
    try:
        _core.selftest_start(threads, nmi_level, signal_hz, _core.gettid(),
                             bool(sigblock_thread), bool(fullmask_handler))
    except OSError as exc:
        raise syscall_error(exc) from None
    wd.start()
    t0 = time.monotonic()
    last_calls, last_progress, next_report = 0, t0, t0 + 1.0
    i = 0
    try:
        while time.monotonic() - t0 < duration:
            variant = CYCLE[i % len(CYCLE)]
            try:
                ev = patcher._runtime_patch({"selftest": variant},
                                            hook=hook if hook_every and i % hook_every == 0
                                            else 0)
            except PvpatchError as exc:
                res.errors.append(str(exc))
                res.failures += 1
                break
            res.batches += ev.batches
            res.sites_patched += ev.sites
            i += 1
            now = time.monotonic()
            beat[0] = now
            if now >= next_report:
                st = _core.selftest_stats()
                if st["site_calls"] > last_calls:
                    last_calls, last_progress = st["site_calls"], now
                elif now - last_progress > stall_timeout:
                    res.stalled = True
                    _dump_state(f"executors made no progress for {stall_timeout:.0f} s")
                    break
                stuck = [tid for tid, calls, _ in st["threads"] if calls == 0]
                if sigblock_thread and st["blocker_calls"] == 0:
                    stuck.append(st["blocker_tid"])
                if stuck and now - t0 > stall_timeout:
                    res.stalled = True
                    _dump_state(f"executor thread(s) {stuck} never completed a pass")
                    break
                if progress:
                    res.site_calls = st["site_calls"]
                    res.signals = st["signals"]
                    progress(res, now - t0)
                next_report = now + 1.0
    finally:
        try:
            st = _core.selftest_stop(stall_timeout)
        except OSError as exc:
            res.stalled = True
            res.errors.append(f"executors did not stop: {syscall_error(exc)}")
            _dump_state("executors did not stop")
            st = _core.selftest_stats()
        done.set()
        patcher.runtime_patch({"selftest": start_variant})
    traps1 = _core.trap_counters()
    res.duration_s = time.monotonic() - t0
    res.site_calls = st["site_calls"] + st["handler_calls"] + st["blocker_calls"]
    res.sigblock_calls = st["blocker_calls"]
    res.handler_runs_fullmask = st["handler_fullmask"]
    res.handler_runs_sigtrap_blocked = st["handler_sigtrap_blocked"]
    res.handler_site_calls = st["handler_calls"]
    res.handler_lock_taken = st["handler_lock_taken"]
    res.signals = st["signals"]
    res.failures += st["executor_failures"] + st["handler_failures"] + st["blocker_failures"]
    if st["first_failure_site"] >= 0:
        res.errors.append(f"site {st['first_failure_site']} returned "
                          f"{st['first_failure_value']:#x}, which no variant returns")
    for k in ("traps", "traps_helped", "traps_on_patcher", "stale_traps", "slot_traps"):
        setattr(res, k, traps1[k] - traps0[k])
    return res
