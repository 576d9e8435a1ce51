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
    """How many transitions completed, and how many stopped at hybrid (counted in C)."""
    completed, incomplete = _core.lock_switch_counts()
    return {"completed": completed, "incomplete": incomplete}


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
    lagging behind the code).

    The protocol is C's pvlock_transition (src/pvpatch/_core/locks.c), the one a process
    without Python runs too; `apply` and the unlock-site check are called back from it."""
    if target not in MODES:  # runtime_patch checked the name against the registry
        raise PvpatchError(f"lock: no transition to variant {target!r} (native, pv, hybrid)")

    def check() -> bool:
        _check_unlocks_kick()  # raises UnlockSitesNotKicking, naming the site
        return True

    status, msg = _core.lock_transition(current, target, apply, float(grace_timeout), check)
    if status == "not-kicking":  # check() raises first; kept for a check that returns False
        raise UnlockSitesNotKicking(msg)
    if status == "incomplete":
        raise LockSwitchIncomplete(target, grace_timeout, _core.lock_pv_inflight())


def install() -> None:
    """Make runtime_patch use :func:`transition` for the lock group (done on import)."""
    set_transition(GROUP, transition)


install()
