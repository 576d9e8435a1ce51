"""Switching the `lock` group while its locks are in use (docs/locks.md has the argument).

The group's variants: ``native`` (queued spinlock, inline one-byte unlock), ``pv`` (waiters
sleep on futexes, unlock kicks), ``hybrid`` (native's lock, pv's unlock).  Importing this
module makes :func:`pvpatch.runtime_patch` switch the group with :func:`transition`:

native -> pv
    1. apply("hybrid")   every unlock site kicks; after the batch's final sync no thread can
                         execute the inline byte store any more
    2. mode = PV         from now on queue heads may sleep on the lock word
    3. apply("pv")

pv -> native
    1. apply("hybrid")   lock sites stop entering the pv lock; unlock sites (still) kick
    2. mode = HYBRID     Dekker partner of a head's "pv_active += 1; read mode"
    3. grace period      until no head is registered as a possible lock-word sleeper
    4. apply("native")   the inline byte store returns; mode = NATIVE

The mode word, not the variant, is what lets a waiter sleep on the lock word, so a batch that
bypasses this protocol can cost throughput but not a wake-up, as long as the mode is not PV.
So the mode becomes PV only after the unlock sites' bytes are read and found kicking: not the
record of the variant, the code itself (an exception or a stray batch cannot make them differ).
"""
from __future__ import annotations

import os
import threading

from . import _core
from .errors import PvpatchError
from .patcher import registry, set_transition, site_bytes

GROUP = "lock"
MODES: dict[str, int] = _core.lock_modes()  # {"native": 0, "hybrid": 1, "pv": 2}
_MODE_NAMES = {v: k for k, v in MODES.items()}

#: How long step 3 of pv -> native waits before giving up (seconds).  The grace period wakes
#: every registered sleeper itself, so it ends as soon as they get a CPU, whatever the
#: critical sections do.
grace_timeout = 2.0

_stats_lock = threading.Lock()
_switches = {"completed": 0, "incomplete": 0}


def _after_fork_in_child() -> None:
    global _stats_lock
    _stats_lock = threading.Lock()  # its holder, if any, is not in the child


os.register_at_fork(after_in_child=_after_fork_in_child)


class UnlockSitesNotKicking(PvpatchError):
    """The mode was about to become PV while an unlock site does not kick."""


class LockSwitchIncomplete(PvpatchError):
    """The grace period of pv -> native did not end in time.  The group was left at hybrid,
    which is correct whatever is still in flight; switching again retries."""

    def __init__(self, target: str, timeout: float, inflight: int):
        super().__init__(f"lock -> {target}: {inflight} thread(s) could still sleep on a lock "
                         f"word after {timeout:g} s; the group stays at hybrid (safe with any "
                         f"thread in flight), switch again to retry")
        self.target = target
        self.timeout = timeout
        self.inflight = inflight


def mode() -> str:
    """The lock mode word: 'native', 'hybrid' or 'pv'."""
    return _MODE_NAMES[_core.lock_mode()]


def switches() -> dict[str, int]:
    """How many transitions completed, and how many stopped at hybrid."""
    with _stats_lock:
        return dict(_switches)


def _count(key: str) -> None:
    with _stats_lock:
        _switches[key] += 1


def _check_unlocks_kick() -> None:
    """Every unlock site holds a kicking rendering (pv's, which hybrid shares), read from the
    code.  Called right before the mode becomes PV; runtime_patch refuses re-entry, so no
    batch of this group runs between this check and the mode store."""
    for s in registry.sites(GROUP):
        kicking = (s.renderings["pv"], s.renderings["hybrid"])
        if s.op == "unlock" and site_bytes(s) not in kicking:
            raise UnlockSitesNotKicking(
                f"lock -> pv: unlock site {s.name} holds {site_bytes(s).hex()}, not the kicking "
                f"{s.renderings['pv'].hex()}; the mode stays {mode()} (a PV head could sleep "
                f"and never be woken)")


def transition(current: str, target: str, apply) -> None:
    """Move the lock group from `current` to `target`; runtime_patch calls this (with its
    lock held) and `apply(variant)` applies one plain batch.  Raises LockSwitchIncomplete,
    with the group at hybrid, when the grace period does not end in time.  Called also when
    current == target: then it only finishes a switch an exception interrupted (the mode word
    lagging behind the code)."""
    if current == target and mode() == target:
        return
    if target == "pv":
        apply("hybrid")                           # 1
        _check_unlocks_kick()
        _core.lock_set_mode(MODES["pv"])          # 2 (after step 1's final sync)
        apply("pv")                               # 3
    elif target == "native":
        apply("hybrid")                           # 1
        _core.lock_set_mode(MODES["hybrid"])      # 2
        if not _core.lock_grace(grace_timeout):   # 3
            _count("incomplete")
            raise LockSwitchIncomplete(target, grace_timeout, _core.lock_pv_inflight())
        apply("native")                           # 4
        _core.lock_set_mode(MODES["native"])
    elif target == "hybrid":
        apply("hybrid")
        _core.lock_set_mode(MODES["hybrid"])
    else:  # runtime_patch checked the name against the registry; a new variant needs a path
        raise PvpatchError(f"lock: no transition to variant {target!r} (native, pv, hybrid)")
    _count("completed")


def install() -> None:
    """Make runtime_patch use :func:`transition` for the lock group (done on import)."""
    set_transition(GROUP, transition)


install()
