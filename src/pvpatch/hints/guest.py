"""pvpatch.auto(): the guest side in one call.

    agent thread (C, _core/agent.c):  hint page ──> policy ──> apply ──> runtime_patch
                                       (R1-R5)      (dwell,    (Python, with the GIL: the
                                                     settle,    patch call, the event, the
                                                     judge)     metrics, the callbacks)

One thread, written in C, does what a guest without Python does too (the preload library runs
the same code): it sleeps on the page's generation futex, reads and validates a snapshot, feeds
the policy, and applies a decision at once by calling back into Python, which runs `patch` and
records the SwitchEvent.  No hand-off between threads lies between a publication and the switch,
and the GIL is taken only to switch and to record what was seen.  A refused switch is retried by
the agent with backoff (50 ms doubling up to 5 s) while it stays what the policy wants.

Until the first observation nothing is patched; the first observation decides at once (a
missing page means the safe variant).
"""
from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
import weakref

from ..errors import PvpatchError
from . import abi, trust
from .metrics import (DEFAULT_ADDR, GuestMetrics, MetricsError, MetricsServer, check_port,
                      check_textfile)
from .policy import DEFAULT_GROUPS, Decision, Policy, PolicyError
from .reader import HintState
from .subscriber import warn_usability
from .supervise import ErrorEvent, Errors
from .worker import SwitchEvent

log = logging.getLogger("pvpatch.hints")


_running: "weakref.WeakSet[_Agent]" = weakref.WeakSet()


@atexit.register
def _stop_at_exit() -> None:
    """Stop agents still running when the interpreter exits: their thread must not call into
    an interpreter that is finalizing."""
    for agent in list(_running):
        try:
            agent.stop()
        except Exception:
            pass


class AutoError(PvpatchError, ValueError):
    """Bad arguments to auto(), or it could not start; the message names which."""


class _Agent:
    """The C agent thread and what Python keeps of it: observations, decisions, switch events.

    Its callbacks run on the agent's thread with the GIL; nothing raised in them reaches C
    (an exception would become a refused switch): every unexpected one is reported."""

    component = "agent"

    def __init__(self, path: str | None, policy: Policy, patch, *, poll_s: float,
                 publisher_uid: int | None, on_event, errors: Errors, metrics,
                 max_events: int = 10000):
        self.path = os.fspath(path) if path else abi.DEFAULT_PATH
        self.policy = policy
        self.patch = patch
        self.poll_s = poll_s
        self.publisher_uid = publisher_uid
        self.on_event = on_event
        self.errors = errors
        self.metrics = metrics
        self.groups = policy.groups
        self.max_events = max_events
        self.events: list[SwitchEvent] = []
        self.decisions: list[Decision] = []
        self.in_force: dict[str, str] = {}
        self.failures = 0
        self.retries = 0
        self.restarts = 0          # callbacks that raised SystemExit/KeyboardInterrupt
        self.observations = 0
        self.warnings = 0
        self.last: HintState | None = None
        self._warned = False
        self._pending = False      # a decision not yet applied successfully
        self._last_ok = False
        self._cv = threading.Condition()
        self._c = None

    def start(self) -> "_Agent":
        from .. import _core
        try:
            self._c = _core.Agent(self.path, self.policy._c, float(self.poll_s), self._apply,
                                  self._observe, publisher_uid=self.publisher_uid,
                                  stack_size=threading.stack_size(),
                                  lock_judge="lock" in self.groups)
        except OSError as e:  # pthread_create: EAGAIN, ENOMEM
            raise RuntimeError(f"can't start new thread: {e.strerror}") from e
        _running.add(self)
        return self

    @property
    def alive(self) -> bool:
        return self._c is not None and self._c.alive

    @property
    def pending(self) -> bool:
        """A decision not yet applied successfully (running or waiting to retry)."""
        with self._cv:
            return self._pending

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread after the switch in progress (the variant in force stays)."""
        if self._c is not None:
            self._c.stop()

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

    # --- callbacks from the agent's thread -------------------------------------------------

    def _state(self, status: str, problem: str, page: bytes | None, seen_ns: int,
               cause_ns: int | None) -> HintState:
        if page is None:
            return HintState(self.path, False, False, problem, seen_ns, kind=status)
        return HintState(self.path, True, status in ("stale", "stopped"), problem, seen_ns,
                         abi.decode(page), cause_ns=cause_ns)

    def _observe(self, status, problem, page, seen_ns, cause_ns) -> None:
        try:
            st = self._state(status, problem, page, seen_ns, cause_ns)
            warned = warn_usability(self.path, st, self._warned)
            self.warnings += warned and not self._warned
            self._warned = warned
            self.last = st
            self.observations += 1
            if self.metrics is not None:
                self.metrics.observed(st.status)
        except BaseException as e:  # noqa: B036 - nothing may reach the C thread
            self.errors.report("notifier", e, "observation skipped")

    def _apply(self, mode, reason, attempt, status, problem, page, seen_ns, cause_ns):
        """Switch every group to `mode`'s variant; None for success, else the error."""
        try:
            return self._switch(mode, reason, attempt, status, problem, page, seen_ns, cause_ns)
        except BaseException as e:  # noqa: B036 - a SystemExit from a callback included
            self.restarts += 1
            self.errors.report("worker", e, "loop restarted")
            return None if self._last_ok else f"{type(e).__name__}: {e}"

    def _switch(self, mode, reason, attempt, status, problem, page, seen_ns, cause_ns):
        # The patch call first: everything it does not need is built after it, off the path
        # from the publication to the switch.
        decided = time.monotonic_ns()
        variants = self.policy.variants(mode)
        self._last_ok = False
        with self._cv:
            self._pending = True
        ok, error, patch_event = False, "", None
        try:
            patch_event = self.patch(dict(variants))
            ok = True
        except PvpatchError as e:
            # The variant in force stays what it was (a refused batch changes nothing); the
            # agent retries with backoff.  Hints are advisory: this costs throughput, not safety.
            error = f"{type(e).__name__}: {e}"
            log.warning("hint agent: switching to %s failed (attempt %d): %s; retrying",
                        variants, attempt, error)
        except Exception as e:  # not pvpatch's own: a bug or the environment; same stance
            error = f"unexpected {type(e).__name__}: {e}"
            self.errors.report("worker", e, f"switch to {variants} retried")
        done = time.monotonic_ns()
        st = self._state(status, problem, page, seen_ns, cause_ns)
        if attempt == 1:
            self.decisions.append(Decision(mode, variants, reason, self.policy.last_switch, st))
            if len(self.decisions) > self.max_events:
                del self.decisions[: len(self.decisions) - self.max_events]
        else:
            self.retries += 1
        p = st.page if st.valid else None
        # Only a publication causes a switch: a page that went stale or missing published
        # nothing, so there is no publication time to measure from.  After a period without
        # usable hints, the cause is the first fresh page (agent.c: cause_ns).
        caused = p is not None and (st.usable or p.state == abi.STATE_STOPPED)
        ev = SwitchEvent(
            variants=variants, mode=mode, reason=reason,
            generation=p.generation if p else None,
            published_ns=st.cause_ns if caused else None, seen_ns=st.seen_ns,
            decided_ns=decided, attempt=attempt, ok=ok, error=error, patch_event=patch_event)
        ev.done_ns = done
        self._last_ok = ev.ok
        if ev.ok:
            self.in_force.update(variants)
        else:
            self.failures += 1
        with self._cv:
            self._pending = not ev.ok
            self.events.append(ev)
            if len(self.events) > self.max_events:
                del self.events[: len(self.events) - self.max_events]
            self._cv.notify_all()
        if self.metrics is not None:
            try:
                self.metrics.switched(ev, self.in_force, self.groups, not ev.ok)
            except Exception as e:
                self.errors.report("metrics", e, "metrics not updated")
        if self.on_event is not None:
            try:
                self.on_event(ev)
            except Exception as e:
                self.errors.report("on_event", e, "callback skipped")
        return None if ev.ok else ev.error


class AutoHandle:
    """What auto() returns: stop() it when done (or use it as a context manager)."""

    def __init__(self, agent: _Agent, errors: Errors, metrics: GuestMetrics | None = None,
                 metrics_server: MetricsServer | None = None):
        self.agent = agent
        self.notifier = agent     # the observations (`last`, `observations`, `warnings`)
        self.worker = agent       # the switches (`events`, `retries`, `failures`, `in_force`)
        self.policy = agent.policy
        self._errors = errors
        self.metrics = metrics
        self.metrics_server = metrics_server
        self.stopped = False

    @property
    def events(self) -> list[SwitchEvent]:
        """Switch attempts so far (newest last); a failed one has ok False and an error, and
        is followed by its retries (attempt 2, 3, ...)."""
        with self.agent._cv:
            return list(self.agent.events)

    @property
    def errors(self) -> list[ErrorEvent]:
        """Unexpected exceptions caught in the agent's callbacks (the agent went on)."""
        return list(self._errors.events)

    @property
    def decisions(self) -> list[Decision]:
        return list(self.agent.decisions)

    @property
    def state(self) -> HintState | None:
        """The latest observation of the hint page."""
        return self.agent.last

    @property
    def mode(self) -> str | None:
        return self.policy.mode

    @property
    def in_force(self) -> dict[str, str]:
        """Variants of the last successful switch."""
        return dict(self.agent.in_force)

    @property
    def settled(self) -> bool:
        """The variants in force are what the policy wants: nothing pending or being retried."""
        want = self.policy.mode
        return (want is not None and not self.agent.pending
                and self.agent.in_force == self.policy.variants(want))

    @property
    def alive(self) -> bool:
        return self.agent.alive

    @property
    def metrics_url(self) -> str | None:
        return self.metrics_server.url if self.metrics_server else None

    def health(self) -> dict:
        """One dict for a status line: the thread, errors, retries, what the page looks like."""
        st = self.agent.last
        return {"alive": self.alive, "errors": self._errors.total,
                "restarts": {"agent": self.agent.restarts},
                "switch_failures": self.agent.failures, "retries": self.agent.retries,
                "page": st.status if st else None, "problem": st.problem if st else None,
                "mode": self.policy.mode, "in_force": self.in_force, "settled": self.settled,
                "judge": self.policy.judge, "judge_why": self.policy.judge_why}

    def wait_events(self, n: int, timeout: float) -> bool:
        return self.agent.wait_events(n, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the agent (after the switch in progress) and the metrics server.  The variant
        in force stays as it is."""
        if self.stopped:
            return
        _stop_all(self.agent, self.metrics_server)
        self.stopped = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _stop_all(agent, server) -> None:
    """Stop whatever was started; raise the first failure after trying all."""
    first = None
    for stop in (lambda: agent.stop(), lambda: server and server.close()):
        try:
            stop()
        except Exception as e:
            first = first or e
    if first is not None:
        raise first


def _check_seconds(name: str, v, *, positive: bool = False, upper: float = 3600.0) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
            or v < 0 or (positive and v == 0) or v > upper:
        raise AutoError(f"auto(): {name} {v!r} must be a finite number of seconds "
                        f"{'> 0' if positive else '>= 0'} and <= {upper:g}")


def auto(hints_path: str | None = None, *, groups: dict[str, tuple[str, str]] | None = None,
         min_dwell_s: float = 1.0, native_settle_s: float = 0.0, patch=None, on_event=None,
         poll_s: float = 0.5, policy: Policy | None = None, publisher_uid: int | None = None,
         metrics_port: int | None = None, metrics_addr: str = DEFAULT_ADDR,
         metrics_textfile: str | None = None, on_error=None) -> AutoHandle:
    """Start the guest agent (one thread, agent.c): follow the hint page at `hints_path` (default abi.DEFAULT_PATH) and
    switch `groups` ({group: (fast variant, safe variant)}, default {"lock": ("native", "pv")})
    with `patch` (default pvpatch.runtime_patch).

    on_event(SwitchEvent) runs on the worker thread after each switch attempt; on_error
    (ErrorEvent) after each unexpected exception the agent caught.  publisher_uid: trust pages
    owned by this uid too (root's and this process's own are always trusted).  metrics_port
    serves pvpatch_guest_* metrics on metrics_addr (loopback by default; 0 picks a port, see
    handle.metrics_url); metrics_textfile writes them to a .prom file for node_exporter.

    Every argument is checked before anything starts: a bad one raises AutoError (or
    RegistryError for an unknown group or variant, with the default patch) naming it, and no
    thread is left behind - also when a thread cannot be created."""
    if hints_path is not None and (not isinstance(hints_path, (str, os.PathLike))
                                   or not os.fspath(hints_path)):
        raise AutoError(f"auto(): hints_path {hints_path!r} is not a path (str or os.PathLike)")
    if policy is not None and groups is not None:
        raise AutoError("auto(): give the groups to the Policy or to auto(), not to both")
    if policy is not None and not isinstance(policy, Policy):
        raise AutoError(f"auto(): policy {policy!r} is not a pvpatch.hints.policy.Policy")
    for name, fn in (("patch", patch), ("on_event", on_event), ("on_error", on_error)):
        if fn is not None and not callable(fn):
            raise AutoError(f"auto(): {name} {fn!r} is not callable")
    _check_seconds("poll_s", poll_s, positive=True, upper=60.0)
    try:
        publisher_uid = trust.check_publisher_uid(publisher_uid)
        if policy is None:
            policy = Policy(groups if groups is not None else DEFAULT_GROUPS,
                            min_dwell_s=min_dwell_s, native_settle_s=native_settle_s)
    except (ValueError, PolicyError) as e:
        raise AutoError(f"auto(): {e}") from None
    try:
        check_port(metrics_port, "metrics_port")
        metrics_textfile = check_textfile(metrics_textfile)
    except MetricsError as e:
        raise AutoError(f"auto(): {e}") from None
    if patch is None:
        from .. import registry, runtime_patch
        for g, pair in policy.groups.items():
            grp = registry.group(g)
            for v in pair:
                grp.check_variant(v)
        patch = runtime_patch

    metrics = None
    if metrics_port is not None or metrics_textfile is not None:
        metrics = GuestMetrics(policy.groups, metrics_textfile)
    errors = Errors(on_error, metrics)
    agent = _Agent(hints_path, policy, patch, poll_s=poll_s, publisher_uid=publisher_uid,
                   on_event=on_event, errors=errors, metrics=metrics)
    server = None
    try:
        if metrics_port is not None:
            server = MetricsServer(metrics.registry, metrics_port, metrics_addr)
        agent.start()
    except BaseException as e:
        try:
            _stop_all(agent, server)
        except Exception:
            pass
        if isinstance(e, PvpatchError):
            raise
        if isinstance(e, RuntimeError):  # "can't start new thread"
            raise AutoError(f"auto(): cannot start the agent's threads ({e}); nothing was "
                            "left running") from e
        raise
    if metrics is not None:
        metrics.flush()
    return AutoHandle(agent, errors, metrics, server)
