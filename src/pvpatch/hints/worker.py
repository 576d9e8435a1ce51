"""The worker: the one guest thread that applies the policy's decisions with runtime_patch.

Decisions arrive in a one-slot mailbox: when several pile up while a switch is running, only the
newest is applied (the older ones are counted as superseded), because only the latest state of the
hints matters.  A switch that fails is retried with backoff until it succeeds or a newer decision
replaces it.  Every applied decision is recorded as a SwitchEvent with the times along the way,
all CLOCK_MONOTONIC nanoseconds so that they compare with the publisher's changed_ns:

  published_ns  the publisher moved the generation (page.changed_ns)     [host]
  seen_ns       the notifier read the page                               [guest]
  decided_ns    the policy chose the variants
  done_ns       runtime_patch returned
  latency_s     done - published: publication to switch complete (None when the decision was
                not caused by a publication, e.g. a page that went stale)
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time

from ..errors import PvpatchError
from . import abi
from .policy import Decision
from .supervise import Errors, Supervised

log = logging.getLogger("pvpatch.hints")


@dataclasses.dataclass
class SwitchEvent:
    variants: dict[str, str]
    mode: str
    reason: str
    generation: int | None
    published_ns: int | None
    seen_ns: int | None
    decided_ns: int
    done_ns: int = 0
    ok: bool = False
    error: str = ""
    patch_event: object = None
    attempt: int = 1       # 1 for the first try of a decision, then one more per retry

    @property
    def latency_s(self) -> float | None:
        return None if self.published_ns is None else (self.done_ns - self.published_ns) / 1e9

    @property
    def notify_latency_s(self) -> float | None:
        if self.published_ns is None or self.seen_ns is None:
            return None
        return (self.seen_ns - self.published_ns) / 1e9

    def to_json(self) -> dict:
        return {"variants": self.variants, "mode": self.mode, "reason": self.reason,
                "generation": self.generation, "published_ns": self.published_ns,
                "seen_ns": self.seen_ns, "decided_ns": self.decided_ns, "done_ns": self.done_ns,
                "latency_s": self.latency_s, "notify_latency_s": self.notify_latency_s,
                "ok": self.ok, "error": self.error or None, "attempt": self.attempt}


RETRY_INITIAL_S = 0.05   # a refused switch is retried after this, doubling up to RETRY_MAX_S
RETRY_MAX_S = 5.0


class Worker(Supervised):
    """Applies decisions with `patch({group: variant})` (default: pvpatch.runtime_patch).

    A switch that fails - refused by runtime_patch, or any other exception - leaves the variant
    in force as it was; the worker retries the same decision after RETRY_INITIAL_S, doubling up
    to RETRY_MAX_S, until it succeeds or a newer decision replaces it.  Every attempt is a
    SwitchEvent (`attempt` counts them), so each retry is visible."""

    component = "worker"

    def __init__(self, patch=None, *, on_event=None, max_events: int = 10000,
                 name: str = "pvpatch-hints-worker", errors: Errors | None = None,
                 metrics=None, groups: dict | None = None,
                 retry_initial_s: float = RETRY_INITIAL_S, retry_max_s: float = RETRY_MAX_S):
        super().__init__(name, errors)
        if patch is None:
            from .. import runtime_patch as patch
        self.patch = patch
        self.on_event = on_event
        self.metrics = metrics
        self.groups = groups or {}
        self.max_events = max_events
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.events: list[SwitchEvent] = []
        self.superseded = 0
        self.failures = 0
        self.retries = 0
        self.in_force: dict[str, str] = {}   # variants of the last successful switch
        self._slot: Decision | None = None     # newest decision, not yet taken
        self._pending: Decision | None = None  # a failed decision waiting for its retry
        self._attempt = 0
        self._retry_at = 0.0
        self._inflight: Decision | None = None
        self._cv = threading.Condition()

    def submit(self, decision: Decision) -> None:
        with self._cv:
            if self._slot is not None:
                self.superseded += 1
            self._slot = decision
            self._cv.notify()

    @property
    def pending(self) -> bool:
        """A decision not yet applied successfully (queued, running or waiting to retry)."""
        with self._cv:
            return self._slot is not None or self._pending is not None or \
                self._inflight is not None

    def wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the switch in progress, if any; TimeoutError if that takes too long."""
        self.request_stop()
        self.join(timeout, "hint worker (runtime_patch still running?)")

    def wait_events(self, n: int, timeout: float) -> bool:
        """Block until at least `n` events are recorded; False on timeout."""
        end = time.monotonic() + timeout
        with self._cv:
            while len(self.events) < n:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
        return True

    def _backoff(self, attempt: int) -> float:
        return min(self.retry_max_s, self.retry_initial_s * 2 ** (attempt - 1))

    def loop(self) -> None:
        while True:
            with self._cv:
                while not self.stopping and self._slot is None:
                    if self._pending is not None:
                        left = self._retry_at - time.monotonic()
                        if left <= 0:
                            break
                        self._cv.wait(left)
                    else:
                        self._cv.wait()
                if self.stopping:
                    return
                if self._slot is not None:  # a newer decision replaces any pending retry
                    d, self._slot = self._slot, None
                    self._pending, self._attempt = None, 1
                else:
                    d, self._pending = self._pending, None
                    self._attempt += 1
                    self.retries += 1
                attempt = self._attempt
                self._inflight = d
            ok = self._apply(d, attempt)
            with self._cv:
                self._inflight = None
                if not ok and self._slot is None:
                    self._pending = d
                    self._retry_at = time.monotonic() + self._backoff(attempt)

    def on_crash(self, exc: BaseException) -> None:
        # The loop died around a switch: retry that decision once the loop is back, unless a
        # newer one is waiting.
        with self._cv:
            d, self._inflight = self._inflight, None
            if d is not None and self._slot is None and self._pending is None:
                self._pending = d
                self._retry_at = time.monotonic() + self._backoff(max(1, self._attempt))

    def _apply(self, d: Decision, attempt: int) -> bool:
        st = d.state
        page = st.page if st is not None and st.valid else None
        caused = page is not None and (st.usable or page.state == abi.STATE_STOPPED)
        cause = None
        if caused:
            cause = st.cause_ns if st.cause_ns is not None else page.changed_ns
        ev = SwitchEvent(
            variants=d.variants, mode=d.mode, reason=d.reason,
            generation=page.generation if page else None,
            # Only a publication causes a switch: a page that went stale or missing did not
            # publish anything, so there is no publication time to measure from.  After a
            # period without usable hints, the cause is the first fresh page (cause_ns).
            published_ns=cause,
            seen_ns=st.seen_ns if st is not None else None,
            decided_ns=time.monotonic_ns(), attempt=attempt)
        try:
            ev.patch_event = self.patch(dict(d.variants))
            ev.ok = True
        except PvpatchError as e:
            # The variant in force stays what it was (a refused batch changes nothing); retried
            # with backoff.  Hints are advisory: this costs throughput, not safety.
            ev.error = f"{type(e).__name__}: {e}"
            log.warning("hint worker: switching to %s failed (attempt %d): %s; retrying",
                        d.variants, attempt, ev.error)
        except Exception as e:  # not pvpatch's own: a bug or the environment; same stance
            ev.error = f"unexpected {type(e).__name__}: {e}"
            self.errors.report(self.component, e, f"switch to {d.variants} retried")
        ev.done_ns = time.monotonic_ns()
        if ev.ok:
            self.in_force.update(d.variants)
        else:
            self.failures += 1
        with self._cv:
            self.events.append(ev)
            if len(self.events) > self.max_events:
                del self.events[: len(self.events) - self.max_events]
            self._cv.notify_all()
        if self.metrics is not None:
            with self._cv:
                pending = not ev.ok or self._slot is not None  # retry due, or a newer decision
            try:
                self.metrics.switched(ev, self.in_force, self.groups, pending)
            except Exception as e:
                self.errors.report("metrics", e, "metrics not updated")
        if self.on_event is not None:
            try:
                self.on_event(ev)
            except Exception as e:
                self.errors.report("on_event", e, "callback skipped")
        return ev.ok
