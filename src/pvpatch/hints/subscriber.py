"""The notifier: a guest thread that sleeps on the generation futex and reports what it sees.

Each round: read a consistent, validated snapshot (reader.HintReader), hand it to the callback,
then sleep on the generation word until the publisher moves it or a timeout passes.  The timeout
is what notices a dead publisher: while the page is usable the thread wakes when it would turn
stale (heartbeats push that out), so a publisher killed with SIGKILL is seen within the staleness
bound.  A page that is not usable is reported as such (the callback falls back to the safe
default) with one warning per episode, not one per round.
"""
from __future__ import annotations

import logging
import os
import time

from . import abi, shm
from .reader import HintReader, HintState
from .supervise import Errors, Supervised

log = logging.getLogger("pvpatch.hints")



def warn_usability(path: str, st: HintState, warned: bool) -> bool:
    """Log, once per change, that the page at `path` stopped or started being usable; returns
    whether a "not usable" warning now stands (pass it back in next time)."""
    if not st.usable and not warned:
        log.warning("hint page %s: %s; using the safe default (no hints)", path, st.problem)
        return True
    if st.usable and warned:
        log.warning("hint page %s: usable again (publisher pid %d, generation %d)", path,
                    st.page.publisher_pid, st.page.generation)
        return False
    return warned

class Notifier(Supervised):
    """Runs `callback(HintState)` on a thread for every observation of the page at `path`.

    poll_s: how often to look again while the page is missing or invalid.  max_wait_s: the
    longest sleep while it is usable (staleness is checked at least this often).
    publisher_uid: a uid whose pages are trusted besides root's and this process's own."""

    component = "notifier"

    def __init__(self, path: str | None, callback, *, poll_s: float = 0.5,
                 max_wait_s: float = 5.0, name: str = "pvpatch-hints-notifier",
                 publisher_uid: int | None = None, errors: Errors | None = None,
                 metrics=None):
        super().__init__(name, errors)
        self.reader = HintReader(path, publisher_uid=publisher_uid)
        self.path = self.reader.path
        self.callback = callback
        self.poll_s = poll_s
        self.max_wait_s = max_wait_s
        self.metrics = metrics
        self.observations = 0
        self.wakeups = {"woken": 0, "changed": 0, "timeout": 0, "interrupted": 0, "slept": 0,
                        "fault": 0}
        self.warnings = 0
        self.last: HintState | None = None
        self._warned = False
        self._was_usable = False

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread; raises TimeoutError if it does not end within `timeout`."""
        self.request_stop()
        self.join(timeout, f"hint notifier on {self.path}")
        self.reader.close()

    def wake(self) -> None:
        m = self.reader.map
        if m is not None and m.addr is not None:
            # Wake our own thread from the futex.  Other guests sleeping on the page are woken
            # too; a wake-up is only ever a reason to re-read, so that costs them one read.
            try:
                shm.futex_wake(m.generation_addr)
            except Exception:  # the mapping may be going away: the timeout still ends the wait
                pass

    def _report(self, st: HintState) -> None:
        warned = warn_usability(self.path, st, self._warned)
        self.warnings += warned and not self._warned
        self._warned = warned
        if st.valid:
            # The publication a switch on this observation reacts to: the one that moved the
            # generation - unless hints were not usable before (stale, invalid, untrusted...):
            # then the page that made them usable again, i.e. this snapshot's heartbeat, not a
            # generation change from before the gap.
            p = st.page
            st.cause_ns = p.changed_ns if self._was_usable or not st.usable else p.heartbeat_ns
        self._was_usable = st.usable
        self.last = st
        self.observations += 1
        if self.metrics is not None:
            self.metrics.observed(st.status)
        try:
            self.callback(st)
        except Exception as e:  # a broken callback must not end the notifier
            self.errors.report(self.component, e, "callback skipped")

    def _timeout(self, st: HintState) -> float:
        if not st.usable:
            return self.poll_s
        p = st.page
        until_stale = (p.heartbeat_ns + p.stale_bound_ns() - time.monotonic_ns()) / 1e9
        return max(0.001, min(self.max_wait_s, until_stale + 0.001))

    def _raw_generation(self) -> int | None:
        """The generation word as it is, valid page or not: waiting on it lets a publisher that
        starts over a garbage or stopped page wake us with its first publication."""
        if self.reader.fd is None:
            return None
        try:
            b = os.pread(self.reader.fd, 4, abi.OFF_GENERATION)
        except OSError:
            return None
        return int.from_bytes(b, "little") if len(b) == 4 else None

    def loop(self) -> None:
        # The reader stays open when the loop ends: stop() may still be waking us through its
        # mapping, and closes it after the join.
        while not self.stopping:
            self._round()

    def _round(self) -> None:
        st = self.reader.read()
        self._report(st)
        if self.stopping:
            return
        gen = st.page.generation if st.valid else self._raw_generation()
        timeout = self._timeout(st)
        if gen is None or self.reader.map is None:
            self._stop_event.wait(timeout)
            self.wakeups["slept"] += 1
        else:
            self.wakeups[self.reader.wait(gen, timeout)] += 1
