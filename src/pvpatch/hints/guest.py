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

import threading
import time

from ..errors import PvpatchError
from .policy import DEFAULT_GROUPS, Decision, Policy
from .reader import HintState
from .subscriber import Notifier
from .worker import SwitchEvent, Worker


class _PolicyThread:
    def __init__(self, policy: Policy, worker: Worker, name: str = "pvpatch-hints-policy"):
        self.policy = policy
        self.worker = worker
        self.decisions: list[Decision] = []
        self._slot: HintState | None = None
        self._cv = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def offer(self, st: HintState) -> None:
        """Notifier callback: keep the newest observation."""
        with self._cv:
            self._slot = st
            self._cv.notify()

    def stop(self, timeout: float) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"hint policy thread did not stop within {timeout} s")

    def _run(self) -> None:
        p = self.policy
        while True:
            with self._cv:
                while self._slot is None and not self._stopping:
                    due = p.deadline()
                    if due is not None and p.clock() >= due:
                        break
                    self._cv.wait(None if due is None else max(0.0, due - p.clock()))
                if self._stopping:
                    return
                st, self._slot = self._slot, None
            d = p.observe(st) if st is not None else p.poll()
            if d is not None:
                self.decisions.append(d)
                self.worker.submit(d)


class AutoHandle:
    """What auto() returns: stop() it when done (or use it as a context manager)."""

    def __init__(self, notifier: Notifier, policy_thread: _PolicyThread, worker: Worker):
        self.notifier = notifier
        self.policy = policy_thread.policy
        self._policy_thread = policy_thread
        self.worker = worker
        self.stopped = False

    @property
    def events(self) -> list[SwitchEvent]:
        """Switches applied so far (newest last)."""
        return list(self.worker.events)

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

    def wait_events(self, n: int, timeout: float) -> bool:
        return self.worker.wait_events(n, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop all three threads; TimeoutError names the one that would not stop.  The variant
        in force stays as it is."""
        if self.stopped:
            return
        end = time.monotonic() + timeout
        self.notifier.stop(max(0.1, end - time.monotonic()))
        self._policy_thread.stop(max(0.1, end - time.monotonic()))
        self.worker.stop(max(0.1, end - time.monotonic()))
        self.stopped = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def auto(hints_path: str | None = None, *, groups: dict[str, tuple[str, str]] | None = None,
         min_dwell_s: float = 1.0, native_settle_s: float = 0.0, patch=None, on_event=None,
         poll_s: float = 0.5, policy: Policy | None = None) -> AutoHandle:
    """Start the guest side: follow the hint page at `hints_path` (default abi.DEFAULT_PATH) and
    switch `groups` ({group: (fast variant, safe variant)}, default {"lock": ("native", "pv")})
    with `patch` (default pvpatch.runtime_patch).  on_event(SwitchEvent) runs on the worker
    thread after each switch.

    With the default patch, every group and variant is checked against the registry first: an
    unknown one raises RegistryError listing what exists, and nothing starts."""
    if policy is not None and groups is not None:
        raise PvpatchError("auto(): give the groups to the Policy or to auto(), not to both")
    if policy is None:
        policy = Policy(groups or DEFAULT_GROUPS, min_dwell_s=min_dwell_s,
                        native_settle_s=native_settle_s)
    if patch is None:
        from .. import registry, runtime_patch
        for g, pair in policy.groups.items():
            grp = registry.group(g)
            for v in pair:
                grp.check_variant(v)
        patch = runtime_patch
    worker = Worker(patch, on_event=on_event).start()
    pt = _PolicyThread(policy, worker).start()
    notifier = Notifier(hints_path, pt.offer, poll_s=poll_s).start()
    return AutoHandle(notifier, pt, worker)
