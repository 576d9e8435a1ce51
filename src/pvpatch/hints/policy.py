"""Hints plus local measurements -> a variant per group, without thrashing.

Each group has a fast variant (worth it only when threads are not preempted: the `lock` group's
native queued spinlock) and a safe one (correct and reasonable everywhere: pv).  The policy picks
the fast variant only when all of these hold:

  * the hint page is usable (valid, fresh, publisher running) and its REALTIME hint is active;
  * locally, this process may run on at least two CPUs (sched_getaffinity): pinned to one CPU a
    spinning waiter always spins against a preempted owner, whatever the host says;
  * the local judge (the lock statistics, when one is given) does not prefer the safe variant;
    its verdict changes only after holding for `judge_hold_s` (docs/hints.md, "The local judge");

and the safe variant otherwise; a missing, invalid or stale page means "no hints" -> safe.

Anti-thrash: after a switch nothing changes for `min_dwell_s`; a change to the fast variant also
waits until REALTIME has held for `native_settle_s`.  A change that is held back is taken when
its deadline passes (deadline()/poll()), if it is still wanted then.  The clock is injectable so
that tests can drive time: each step passes `now` into the C policy.

The rules have one implementation, the C agent's (`_core/agent.c`, pvagent_policy_*): this class
feeds it and keeps the Python view (groups, Decision objects).
"""
from __future__ import annotations

import dataclasses
import math
import os
import time

from ..errors import PvpatchError
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
                 clock=time.monotonic, allowed_cpus=_allowed_cpus, judge_hold_s: float = 1.0):
        self.groups = check_groups(DEFAULT_GROUPS if groups is None else groups)
        for name, v in (("min_dwell_s", min_dwell_s), ("native_settle_s", native_settle_s),
                        ("judge_hold_s", judge_hold_s)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v < 0:
                raise PolicyError(f"policy: {name} {v!r} must be a finite number of seconds "
                                  ">= 0")
        from .. import _core
        self.min_dwell_s = min_dwell_s
        self.native_settle_s = native_settle_s
        self.judge_hold_s = judge_hold_s
        self.clock = clock
        self.allowed_cpus = allowed_cpus
        self._c = _core.AgentPolicy(float(min_dwell_s), float(native_settle_s),
                                    float(judge_hold_s))
        self._state: HintState | None = None

    # The state lives in the C policy (which pvpatch.auto()'s agent thread drives directly).
    @property
    def mode(self) -> str | None:
        """What the last decision chose: "fast", "safe", or None before the first."""
        return self._c.mode

    @property
    def last_switch(self) -> float | None:
        return self._c.last_switch

    @property
    def held_back(self) -> int:
        """Polls that found a change not yet due (dwell or settle)."""
        return self._c.held_back

    @property
    def why(self) -> str:
        return self._c.why

    def variants(self, mode: str) -> dict[str, str]:
        i = 0 if mode == "fast" else 1
        return {g: pair[i] for g, pair in self.groups.items()}

    def observe(self, st: HintState, judge: int = -2, judge_why: str | None = None
                ) -> Decision | None:
        """Feed one observation; returns a Decision when the variants must change now.

        judge: a new verdict of the local judge (-1 no opinion, 0 prefer the safe variant,
        1 the fast one is fine), or -2 for none since the last call."""
        now = self.clock()
        self._state = st
        page = st.page if st.valid else None
        cpus = self.allowed_cpus() if st.usable else 2  # asked only when it can matter
        if self._c.observe(st.usable, st.problem, st.active_hints,
                           page.reason if page is not None else 0, cpus, judge, judge_why,
                           float(now)):
            return self._decision()
        return None

    def deadline(self) -> float | None:
        """Policy-clock time at which a held-back change becomes due, or None."""
        return self._c.deadline()

    def poll(self) -> Decision | None:
        """Take a held-back change whose deadline has passed."""
        if self._c.poll(float(self.clock())):
            return self._decision()
        return None

    def _decision(self) -> Decision:
        mode = self._c.mode
        return Decision(mode, self.variants(mode), self._c.why, self._c.last_switch,
                        self._state)
