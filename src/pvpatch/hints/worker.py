"""The worker: the one guest thread that applies the policy's decisions with runtime_patch.

Decisions arrive in a one-slot mailbox: when several pile up while a switch is running, only the
newest is applied (the older ones are counted as superseded), because only the latest state of the
hints matters.  Every applied decision is recorded as a SwitchEvent with the times along the way,
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
                "ok": self.ok, "error": self.error or None}


class Worker:
    """Applies decisions with `patch({group: variant})` (default: pvpatch.runtime_patch)."""

    def __init__(self, patch=None, *, on_event=None, max_events: int = 10000,
                 name: str = "pvpatch-hints-worker"):
        if patch is None:
            from .. import runtime_patch as patch
        self.patch = patch
        self.on_event = on_event
        self.max_events = max_events
        self.events: list[SwitchEvent] = []
        self.superseded = 0
        self.failures = 0
        self._slot: Decision | None = None
        self._cv = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> "Worker":
        self._thread.start()
        return self

    def submit(self, decision: Decision) -> None:
        with self._cv:
            if self._slot is not None:
                self.superseded += 1
            self._slot = decision
            self._cv.notify()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the switch in progress, if any; TimeoutError if that takes too long."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"hint worker did not stop within {timeout} s "
                               "(runtime_patch still running?)")

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

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._slot is None and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return
                d, self._slot = self._slot, None
            self._apply(d)

    def _apply(self, d: Decision) -> None:
        st = d.state
        page = st.page if st is not None and st.valid else None
        caused = page is not None and (st.usable or page.state == abi.STATE_STOPPED)
        ev = SwitchEvent(
            variants=d.variants, mode=d.mode, reason=d.reason,
            generation=page.generation if page else None,
            # Only a publication causes a switch: a page that went stale or missing did not
            # publish anything, so there is no publication time to measure from.
            published_ns=page.changed_ns if caused else None,
            seen_ns=st.seen_ns if st is not None else None,
            decided_ns=time.monotonic_ns())
        try:
            ev.patch_event = self.patch(dict(d.variants))
            ev.ok = True
        except PvpatchError as e:
            # The variant in force stays what it was (a refused batch changes nothing); the
            # next decision tries again.  Hints are advisory: this costs throughput, not safety.
            ev.error = f"{type(e).__name__}: {e}"
            self.failures += 1
            log.warning("hint worker: switching to %s failed: %s", d.variants, ev.error)
        ev.done_ns = time.monotonic_ns()
        with self._cv:
            self.events.append(ev)
            if len(self.events) > self.max_events:
                del self.events[: len(self.events) - self.max_events]
            self._cv.notify_all()
        if self.on_event is not None:
            try:
                self.on_event(ev)
            except Exception:
                log.exception("hint worker: on_event callback failed")
