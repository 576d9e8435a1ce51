"""Guest threads that never end silently.

Each of auto()'s threads (notifier, policy, worker) runs its loop under `Supervised`: any
exception that escapes the loop - pvpatch's own or not, a ProcessLookupError under thread churn,
even a SystemExit from a callback - is caught, counted, reported (log, the handle's `errors`, the
metrics, the on_error callback) and the loop is entered again after a short backoff.  Only stop()
ends the thread.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
import traceback

log = logging.getLogger("pvpatch.hints")

BACKOFF_S = (0.01, 0.05, 0.2, 1.0)  # between restarts of a loop that keeps failing


@dataclasses.dataclass
class ErrorEvent:
    """An unexpected exception caught in a guest thread."""
    component: str        # notifier, policy, worker
    error: str            # "ProcessLookupError: [Errno 3] No such process"
    time_ns: int          # CLOCK_MONOTONIC
    traceback: str
    action: str           # what happened next ("loop restarted", "switch retried")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


class Errors:
    """The record of a guest's unexpected exceptions, shared by its threads."""

    def __init__(self, on_error=None, metrics=None, max_events: int = 1000):
        self.on_error = on_error
        self.metrics = metrics
        self.max_events = max_events
        self.events: list[ErrorEvent] = []
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def report(self, component: str, exc: BaseException, action: str) -> ErrorEvent:
        ev = ErrorEvent(component, f"{type(exc).__name__}: {exc}", time.monotonic_ns(),
                        "".join(traceback.format_exception(exc)), action)
        with self._lock:
            self.events.append(ev)
            if len(self.events) > self.max_events:
                del self.events[: len(self.events) - self.max_events]
            self.counts[component] = self.counts.get(component, 0) + 1
        log.error("pvpatch hints %s: unexpected %s; %s\n%s", component, ev.error, action,
                  ev.traceback.rstrip())
        if self.metrics is not None:
            try:
                self.metrics.error(component)
            except Exception:  # metrics must not turn one error into two
                log.exception("pvpatch hints: metrics update failed")
        if self.on_error is not None:
            try:
                self.on_error(ev)
            except Exception:
                log.exception("pvpatch hints: on_error callback failed")
        return ev

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class Supervised:
    """A daemon thread running `self.loop()` until stop is requested, re-entering it after any
    exception.  Subclasses implement loop() (return when `self.stopping`) and wake() (make a
    blocked loop() look at `self.stopping`)."""

    component = "?"

    def __init__(self, name: str, errors: Errors | None):
        self.errors = errors if errors is not None else Errors()
        self.restarts = 0
        self.stopping = False
        self._stop_event = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def start(self):
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    def _main(self) -> None:
        while not self.stopping:
            try:
                self.loop()
                if self.stopping:
                    return
            except BaseException as e:  # noqa: B036 - nothing may end this thread silently
                if self.stopping:
                    return
                self.restarts += 1
                self.on_crash(e)
                self.errors.report(self.component, e, "loop restarted")
                self._stop_event.wait(BACKOFF_S[min(self.restarts, len(BACKOFF_S)) - 1])

    def on_crash(self, exc: BaseException) -> None:
        """Hook: keep whatever the loop was doing so that the restarted loop resumes it."""

    def wake(self) -> None:
        pass

    def request_stop(self) -> None:
        self.stopping = True
        self._stop_event.set()
        self.wake()

    def join(self, timeout: float, what: str) -> None:
        if self.started:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"{what} did not stop within {timeout} s")
