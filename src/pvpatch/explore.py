"""Exhaustive state exploration shared by the protocol models (pvpatch.model, pvpatch.model_lock).

A model is a start state (hashable), a successor function and, optionally, an invariant, a
test for the states where the run may end, and a canonical form (symmetry reduction).
:func:`explore` visits every reachable state breadth first, so the first violation found has
a shortest trace, and checks:

- every step the model reports as a violation (``("VIOLATION", what)`` among the successors);
- the invariant, in every state;
- stuck states: no step enabled and the run may not end there (a deadlock, or every thread
  asleep with nobody left to wake it), or ends badly (``final`` returns a reason); these are
  reported after the whole space has been searched for invariant violations;
- with ``liveness``, that the end stays reachable from every reachable state (AG EF end): a
  set of states the run can enter and never leave without ending (a livelock, a sleeper that
  nobody wakes while the others go round forever) is reported with the trace into it and,
  with ``go_round``, the steps that go round from there.

Symmetry: ``canon(state)`` maps a state to the representative of its class (for instance the
least of its thread permutations); states are stored by representative only.  Traces are then
replayed from the start with concrete states, so the thread names in a trace stay consistent.
"""
from __future__ import annotations

import time
from array import array
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterable

VIOLATION = "VIOLATION"

Step = tuple[str, Hashable]            # (label, next state) or (VIOLATION, what)
Successors = Callable[[Hashable], Iterable[Step]]


@dataclass
class Result:
    states: int
    violations: list[tuple[str, list[str]]] = field(default_factory=list)
    seconds: float = 0.0
    mutation: str | None = None
    config: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    def as_dict(self) -> dict:
        return {"states": self.states, "ok": self.ok, "mutation": self.mutation,
                "seconds": round(self.seconds, 3), "config": self.config,
                "violations": [{"what": w, "trace": steps} for w, steps in self.violations]}


def explore(start: Hashable, successors: Successors, *,
            invariant: Callable[[Hashable], str | None] | None = None,
            final: Callable[[Hashable], bool | str] | None = None,
            canon: Callable[[Hashable], Hashable] | None = None,
            liveness: bool = False, max_states: int = 2_000_000,
            livelock: str = "the end is unreachable from here: every continuation runs forever "
                            "without finishing",
            go_round: Callable[[list[Step]], Step] | None = None) -> Result:
    """Visit every state reachable from `start`; stop at the first violation.

    livelock: the words of the liveness violation.  go_round: with it, the liveness trace goes
    on past the state the end is unreachable from, following the step ``go_round`` picks among
    each state's successors (the model knows which actor is the one caught), until a state
    repeats (at most 24 steps); without it, the trace ends at that state."""
    t0 = time.perf_counter()
    ident = canon or (lambda s: s)
    start = ident(start)
    index: dict = {start: 0}
    states = [start]
    parent = array("l", [-1])
    # Edges, kept only for the liveness pass: successor ids of state i are
    # succ[off[i]:off[i + 1]].
    succ = array("l")
    off = array("l", [0])
    final_ids: list[int] = []
    bad_end: tuple[str, int, str] | None = None   # the first stuck state, reported last
    result = Result(0)

    def fail(what: str, sid: int, last: str | None, recheck=None, more=None) -> Result:
        labels, concrete = _replay(states, parent, sid, successors, ident)
        tail = [] if last is None else [last]
        if more is not None:  # steps past the state, from it as the trace names it
            tail += more(concrete)
        if recheck is not None:  # the message again, on the state as the trace names it
            what = recheck(concrete) or what
            if tail and tail[0] not in ("(stuck)", "(end)", "(no way out)"):
                tail[0] = what
        result.violations.append((what, labels + tail))
        result.states = len(states)
        result.seconds = time.perf_counter() - t0
        return result

    def step_violation(s):
        for label, nxt in successors(s):
            if label == VIOLATION:
                return nxt
        return None

    i = 0
    while i < len(states):
        s = states[i]
        if invariant is not None:
            bad = invariant(s)
            if bad:
                return fail(bad, i, bad, invariant)
        steps = list(successors(s))
        if not steps:
            end = True if final is None else final(s)
            if end is True:
                final_ids.append(i)
            elif bad_end is None:
                what = end or "stuck: no step enabled"
                bad_end = (what, i, "(stuck)" if not end else "(end)")
        for label, nxt in steps:
            if label == VIOLATION:
                return fail(nxt, i, nxt, step_violation)
            c = ident(nxt)
            j = index.get(c)
            if j is None:
                j = len(states)
                if j >= max_states:
                    result.violations.append((f"state space larger than {max_states}", []))
                    result.states = j
                    result.seconds = time.perf_counter() - t0
                    return result
                index[c] = j
                states.append(c)
                parent.append(i)
            if liveness:
                succ.append(j)
        if liveness:
            off.append(len(succ))
        i += 1

    # Safety first: a stuck state or an unreachable end is reported only when no state
    # breaks an invariant (whose trace is usually the more telling one).
    if bad_end is not None:
        return fail(bad_end[0], bad_end[1], bad_end[2],
                    lambda c: final(c) if isinstance(final(c), str) else None)
    if liveness:
        bad = _cannot_end(len(states), succ, off, final_ids)
        if bad is not None:
            if go_round is None:
                return fail(livelock, bad, "(no way out)")
            return fail(livelock, bad, "(from here the end is unreachable:)",
                        more=lambda c: _go_round(c, successors, ident, go_round))
    result.states = len(states)
    result.seconds = time.perf_counter() - t0
    return result


def _cannot_end(n: int, succ: array, off: array, final_ids: list[int]) -> int | None:
    """The least (first visited, so shortest trace) state from which no final state is
    reachable, or None."""
    # Reverse edges by counting sort.
    count = array("l", [0]) * (n + 1)
    for j in succ:
        count[j + 1] += 1
    for k in range(n):
        count[k + 1] += count[k]
    pred = array("l", [0]) * len(succ)
    fill = array("l", count)
    for i in range(n):
        for e in range(off[i], off[i + 1]):
            j = succ[e]
            pred[fill[j]] = i
            fill[j] += 1
    good = bytearray(n)
    queue = deque(final_ids)
    for f in final_ids:
        good[f] = 1
    while queue:
        j = queue.popleft()
        for e in range(count[j], count[j + 1]):
            i = pred[e]
            if not good[i]:
                good[i] = 1
                queue.append(i)
    for i in range(n):
        if not good[i]:
            return i
    return None


def _go_round(cur: Hashable, successors: Successors, ident: Callable,
              pick: Callable[[list[Step]], Step], limit: int = 24) -> list[str]:
    """The steps from `cur`, a state the end is unreachable from (so is every state after
    it), following `pick` until a state repeats: the way the run goes round."""
    steps = []
    visited = set()
    while ident(cur) not in visited and len(visited) < limit:
        visited.add(ident(cur))
        label, cur = pick([x for x in successors(cur) if x[0] != VIOLATION])
        steps.append("  " + label)
    steps.append("livelock: round again")
    return steps


def _replay(states: list, parent: array, sid: int, successors: Successors,
            ident: Callable) -> tuple[list[str], Hashable]:
    """The labels of a path from the start to state `sid`, recomputed on concrete states so
    that under symmetry reduction every label names threads as the first one does; and the
    concrete state reached."""
    path = []
    k = sid
    while k != -1:
        path.append(states[k])
        k = parent[k]
    path.reverse()
    labels = []
    cur = path[0]
    for want in path[1:]:
        for label, nxt in successors(cur):
            if label != VIOLATION and ident(nxt) == want:
                labels.append(label)
                cur = nxt
                break
        else:  # cannot happen: the parent edge exists
            labels.append("(trace lost)")
            break
    return labels, cur


def report(r: Result, ok_text: str, out=None, header: str | None = None) -> None:
    """Print a result as the models' command lines do: a header line (by default the state
    count, time and mutation), then each violation with its numbered trace, or `ok_text`."""
    import sys
    out = out or sys.stdout
    if header is None:
        tag = f" (mutation {r.mutation})" if r.mutation else ""
        header = f"{r.states:,} states explored in {r.seconds:.1f} s{tag}"
    print(header, file=out)
    for what, steps in r.violations:
        print(f"VIOLATION: {what}", file=out)
        for i, step in enumerate(steps, 1):
            print(f"  {i:3d}. {step}", file=out)
    if r.ok:
        print(ok_text, file=out)
