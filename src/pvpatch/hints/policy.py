"""Hints plus local measurements -> a variant per group, without thrashing.

Each group has a fast variant (worth it only when threads are not preempted: the `lock` group's
native queued spinlock) and a safe one (correct and reasonable everywhere: pv).  The policy picks
the fast variant only when all of these hold:

  * the hint page is usable (valid, fresh, publisher running) and its REALTIME hint is active;
  * locally, this process may run on at least two CPUs (sched_getaffinity): pinned to one CPU a
    spinning waiter always spins against a preempted owner, whatever the host says;

and the safe variant otherwise; a missing, invalid or stale page means "no hints" -> safe.

Anti-thrash: after a switch nothing changes for `min_dwell_s`; a change to the fast variant also
waits until REALTIME has held for `native_settle_s`.  A change that is held back is taken when
its deadline passes (deadline()/poll()), if it is still wanted then.  The clock is injectable so
that tests can drive time.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time

from ..errors import PvpatchError
from . import abi
from .reader import HintState

class PolicyError(PvpatchError, ValueError):
    """Bad policy parameters."""


DEFAULT_GROUPS = {"lock": ("native", "pv")}  # group: (fast, safe)


@dataclasses.dataclass
class Decision:
    mode: str                      # "fast" or "safe"
    variants: dict[str, str]       # {group: variant}
    reason: str
    decided: float                 # policy clock
    state: HintState | None        # the observation that led here


def check_groups(groups) -> dict[str, tuple[str, str]]:
    """{group: (fast variant, safe variant)}, names as strings; PolicyError naming the bad one."""
    if not isinstance(groups, dict):
        raise PolicyError(f"policy: groups {groups!r} is not a dict {{group: (fast, safe)}}")
    if not groups:
        raise PolicyError("policy: no groups to drive")
    out = {}
    for g, pair in groups.items():
        if not isinstance(g, str) or not g:
            raise PolicyError(f"policy: group name {g!r} is not a non-empty string")
        if not isinstance(pair, (tuple, list)) or len(pair) != 2 \
                or not all(isinstance(v, str) and v for v in pair) or pair[0] == pair[1]:
            raise PolicyError(f"policy: group {g!r}: {pair!r} is not (fast variant, safe "
                              "variant), two different variant names")
        out[g] = (pair[0], pair[1])
    return out


def _allowed_cpus() -> int:
    return len(os.sched_getaffinity(0))


class Policy:
    def __init__(self, groups: dict[str, tuple[str, str]] | None = None, *,
                 min_dwell_s: float = 1.0, native_settle_s: float = 0.0,
                 clock=time.monotonic, allowed_cpus=_allowed_cpus):
        self.groups = check_groups(DEFAULT_GROUPS if groups is None else groups)
        for name, v in (("min_dwell_s", min_dwell_s), ("native_settle_s", native_settle_s)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v < 0:
                raise PolicyError(f"policy: {name} {v!r} must be a finite number of seconds "
                                  ">= 0")
        self.min_dwell_s = min_dwell_s
        self.native_settle_s = native_settle_s
        self.clock = clock
        self.allowed_cpus = allowed_cpus
        self.mode: str | None = None     # what the last decision chose (None: none yet)
        self.last_switch: float | None = None
        self._fast_since: float | None = None
        self._state: HintState | None = None
        self._want = "safe"
        self._why = "no observation yet"
        self.held_back = 0               # changes delayed by dwell or settle

    def variants(self, mode: str) -> dict[str, str]:
        i = 0 if mode == "fast" else 1
        return {g: pair[i] for g, pair in self.groups.items()}

    def _judge(self, st: HintState) -> tuple[str, str]:
        if not st.usable:
            return "safe", f"no hints: {st.problem}"
        if not st.active_hints & abi.HINT_REALTIME:
            reason = abi.REASONS.get(st.page.reason, "?")
            return "safe", f"REALTIME not given (publisher: {reason})"
        cpus = self.allowed_cpus()
        if cpus < 2:
            return "safe", f"REALTIME given, but this process may run on {cpus} CPU only"
        return "fast", "REALTIME given"

    def observe(self, st: HintState) -> Decision | None:
        """Feed one observation; returns a Decision when the variants must change now."""
        now = self.clock()
        self._state = st
        want, why = self._judge(st)
        if want == "fast" and self._want != "fast":
            self._fast_since = now
        elif want != "fast":
            self._fast_since = None
        self._want, self._why = want, why
        return self.poll()

    def deadline(self) -> float | None:
        """Policy-clock time at which a held-back change becomes due, or None."""
        if self._state is None or self._want == self.mode:
            return None  # nothing observed yet: nothing to decide
        due = self.last_switch + self.min_dwell_s if self.mode is not None else float("-inf")
        if self._want == "fast":
            due = max(due, self._fast_since + self.native_settle_s)
        return due

    def poll(self) -> Decision | None:
        """Take a held-back change whose deadline has passed."""
        now = self.clock()
        want = self._want
        due = self.deadline()
        if due is None:
            return None
        if now < due:
            self.held_back += 1  # polls that found the change not yet due
            return None
        self.mode, self.last_switch = want, now
        return Decision(want, self.variants(want), self._why, now, self._state)
