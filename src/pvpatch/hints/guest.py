"""pvpatch.auto(): the guest side in one call.

    notifier thread ──HintState──> policy thread ──Decision──> worker thread ──> runtime_patch

The notifier sleeps on the page's generation futex; the policy thread turns observations into
decisions, and wakes at the policy's deadlines to take changes that dwell or settle held back;
the worker applies them.  Data flows one way; each hand-off is a one-slot mailbox that keeps the
newest item, because only the latest state of the hints matters.

Until the first observation nothing is patched; the first observation decides at once (a
missing page means the safe variant).
"""
from __future__ import annotations

import math
import os
import threading
import time

from ..errors import PvpatchError
from . import trust
from .metrics import (DEFAULT_ADDR, GuestMetrics, MetricsError, MetricsServer, check_port,
                      check_textfile)
from .policy import DEFAULT_GROUPS, Decision, Policy, PolicyError
from .reader import HintState
from .subscriber import Notifier
from .supervise import ErrorEvent, Errors, Supervised
from .worker import SwitchEvent, Worker


class AutoError(PvpatchError, ValueError):
    """Bad arguments to auto(), or it could not start; the message names which."""


class _PolicyThread(Supervised):
    component = "policy"

    def __init__(self, policy: Policy, worker: Worker, name: str = "pvpatch-hints-policy",
                 errors: Errors | None = None):
        super().__init__(name, errors)
        self.policy = policy
        self.worker = worker
        self.decisions: list[Decision] = []
        self._slot: HintState | None = None
        self._cv = threading.Condition()

    def offer(self, st: HintState) -> None:
        """Notifier callback: keep the newest observation."""
        with self._cv:
            self._slot = st
            self._cv.notify()

    def wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def stop(self, timeout: float) -> None:
        self.request_stop()
        self.join(timeout, "hint policy thread")

    def loop(self) -> None:
        p = self.policy
        while True:
            with self._cv:
                while self._slot is None and not self.stopping:
                    due = p.deadline()
                    if due is not None and p.clock() >= due:
                        break
                    self._cv.wait(None if due is None else max(0.0, due - p.clock()))
                if self.stopping:
                    return
                st, self._slot = self._slot, None
            d = p.observe(st) if st is not None else p.poll()
            if d is not None:
                self.decisions.append(d)
                if len(self.decisions) > 10000:
                    del self.decisions[:-10000]
                self.worker.submit(d)


class AutoHandle:
    """What auto() returns: stop() it when done (or use it as a context manager)."""

    def __init__(self, notifier: Notifier, policy_thread: _PolicyThread, worker: Worker,
                 errors: Errors, metrics: GuestMetrics | None = None,
                 metrics_server: MetricsServer | None = None):
        self.notifier = notifier
        self.policy = policy_thread.policy
        self._policy_thread = policy_thread
        self.worker = worker
        self._errors = errors
        self.metrics = metrics
        self.metrics_server = metrics_server
        self.stopped = False

    @property
    def events(self) -> list[SwitchEvent]:
        """Switch attempts so far (newest last); a failed one has ok False and an error, and
        is followed by its retries (attempt 2, 3, ...)."""
        return list(self.worker.events)

    @property
    def errors(self) -> list[ErrorEvent]:
        """Unexpected exceptions caught in the agent's threads (each thread went on)."""
        return list(self._errors.events)

    @property
    def decisions(self) -> list[Decision]:
        return list(self._policy_thread.decisions)

    @property
    def state(self) -> HintState | None:
        """The latest observation of the hint page."""
        return self.notifier.last

    @property
    def mode(self) -> str | None:
        return self.policy.mode

    @property
    def in_force(self) -> dict[str, str]:
        """Variants of the last successful switch."""
        return dict(self.worker.in_force)

    @property
    def settled(self) -> bool:
        """The variants in force are what the policy wants: nothing pending or being retried."""
        want = self.policy.mode
        return (want is not None and not self.worker.pending
                and self.worker.in_force == self.policy.variants(want))

    @property
    def alive(self) -> bool:
        return self.notifier.alive and self._policy_thread.alive and self.worker.alive

    @property
    def metrics_url(self) -> str | None:
        return self.metrics_server.url if self.metrics_server else None

    def health(self) -> dict:
        """One dict for a status line: threads, errors, retries, what the page looks like."""
        st = self.notifier.last
        return {"alive": self.alive, "errors": self._errors.total,
                "restarts": {t.component: t.restarts
                             for t in (self.notifier, self._policy_thread, self.worker)},
                "switch_failures": self.worker.failures, "retries": self.worker.retries,
                "page": st.status if st else None, "problem": st.problem if st else None,
                "mode": self.policy.mode, "in_force": self.in_force, "settled": self.settled}

    def wait_events(self, n: int, timeout: float) -> bool:
        return self.worker.wait_events(n, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop all threads; TimeoutError names the one that would not stop.  The variant in
        force stays as it is."""
        if self.stopped:
            return
        end = time.monotonic() + timeout
        _stop_all(self.notifier, self._policy_thread, self.worker, self.metrics_server,
                  lambda: max(0.1, end - time.monotonic()))
        self.stopped = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _stop_all(notifier, policy_thread, worker, server, left) -> None:
    """Stop whatever was started, in data-flow order; raise the first failure after trying all."""
    first = None
    for stop in (lambda: notifier.stop(left()), lambda: policy_thread.stop(left()),
                 lambda: worker.stop(left()), lambda: server and server.close()):
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
    """Start the guest side: follow the hint page at `hints_path` (default abi.DEFAULT_PATH) and
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
    worker = Worker(patch, on_event=on_event, errors=errors, metrics=metrics,
                    groups=policy.groups)
    pt = _PolicyThread(policy, worker, errors=errors)
    notifier = Notifier(hints_path, pt.offer, poll_s=poll_s, publisher_uid=publisher_uid,
                        errors=errors, metrics=metrics)
    server = None
    try:
        # Consumers first, so that nothing produced is dropped; the notifier last.
        worker.start()
        pt.start()
        notifier.start()
        if metrics_port is not None:
            server = MetricsServer(metrics.registry, metrics_port, metrics_addr)
    except BaseException as e:
        try:
            _stop_all(notifier, pt, worker, server, lambda: 5.0)
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
    return AutoHandle(notifier, pt, worker, errors, metrics, server)
