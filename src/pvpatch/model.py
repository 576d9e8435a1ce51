"""An exhaustive model of the batch protocol (src/pvpatch/_core/poke.c, docs/protocol.md).

Every interleaving of one patcher and N executor threads over one site is explored, breadth
first, and these things are checked in every reachable state:

- no thread executes a torn instruction (first byte of one version, tail of another; for the
  rel32 path, half of one displacement and half of another), nor starts an instruction at a
  byte that is not an instruction boundary;
- every instruction a thread executes, fetched or emulated by the trap handler, is one the site
  may run at that moment: the current version, or the live batch's new version once that batch
  has written its int3 (before it, the batch has changed nothing and may still be refused);
  once the batch has returned, only its new version;
- a trap handler reads only the batch it holds a reference to (no batch is reused while held);
- the patcher's read-back after each batch finds the new bytes, and a batch never returns,
  even with an error, leaving the site in a mixed state;
- no state is stuck (some step is always enabled until everyone is done).

The site has a first byte and a tail.  Values: O (before), N (after batch 1), P (after batch 2),
Q (after batch 3), I (int3).  Memory is modelled as x86 code really behaves for another thread:
a thread may fetch any value written to a byte since its last serialisation (stale instruction
bytes), never an older one than it already saw; a sync (membarrier SYNC_CORE) serialises every
thread, and it can only happen while no thread is between fetching and executing an
instruction, because the IPI lands on instruction boundaries.  A sync may fail (membarrier
returns an error, nobody is serialised); the rule is that the patcher retries it.

The trap handler (poke.c, trap_handler) writes no code and issues no sync.  It loads the live
batch, takes a reference, checks the batch is still live, and if the site's first byte is int3
it executes the batch entry's NEW instruction itself; otherwise it rewinds to the site start.
A `call` or a NOP is executed when the handler has made that check: the entry is immutable
while held, so from then on the thread is, for every other thread, inside the callee (or past
the NOP).  An inline rendering runs later, out of line, in a slot of the batch, after the
handler returns: that is a real execution at a later time, so the slot code drops the
reference after the instruction and a batch publishes only when no earlier batch is held.
Batches are reclaimed only when no handler holds them; the patcher never waits for a handler
while it holds written bytes.

A thread may take a signal at any instruction boundary, including inside the trap handler; the
signal handler runs the site once (and may trap, nested in the interrupted handler).  The
patcher's own thread may take one too, while the patcher is suspended.

The rel32 path (`path="rel32"`): a call->call retarget whose rel32 field lies in one aligned
8-byte word is one aligned store of the field and one sync; no int3, no batch for the handler.

Mutations switch off one piece of the protocol each; the tests show the model then finds the
failure it guards against, so the model is not vacuous.  Each has the configuration under
which it shows (MUTATION_CONFIG).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

I = "I"
C = "C"                             # the rel32 path's opcode byte, never written
VERSIONS = ("O", "N", "P", "Q")     # the site's bytes before batch 1, after batch 1, 2, 3
# The patcher's syncs: program counter -> (sync number, next step, mutation that skips it).
SYNCS = {"sync1": (1, "tail", "no_sync1"), "sync2": (2, "first", "no_sync2"),
         "sync3": (3, "unpublish", None), "sync": (1, "readback", "rel32_no_sync")}
# Where the live batch's new version may run: from its int3 (or its store) to its return.
OPEN = {"int3": ("sync1", "tail", "sync2", "first", "sync3", "unpublish", "readback"),
        "rel32": ("store_hi", "sync", "readback")}
# Program counters where a thread is between instructions (a signal may land there).
BOUNDARY = ("fetch0", "inner", "h_load", "h_ref", "h_look", "h_recheck", "h_entry", "h_drop",
            "h_slot")
KINDS = ("call", "inline")
PATHS = ("int3", "rel32")
MUTATIONS = ("no_sync1", "no_sync2", "first_byte_early", "no_int3_check", "int3_check_late",
             "emulate_old",
             "reclaim_held", "no_drain", "two_insn_default", "sync_failure_ignored",
             "sync_failure_gives_up", "handler_waits", "rel32_torn_store", "rel32_no_sync")
# The smallest configuration under which each mutation shows (all else as check()'s defaults).
MUTATION_CONFIG = {
    "int3_check_late": {"executors": 1, "batches": 3, "executions": 3},
    "emulate_old": {"kind": "inline"},
    "no_drain": {"kind": "inline", "executors": 1},
    "handler_waits": {"executors": 1, "executions": 1, "patcher_signals": 1},
    "rel32_torn_store": {"path": "rel32"},
    "rel32_no_sync": {"path": "rel32"},
}


@dataclass
class Result:
    states: int
    violations: list[tuple[str, list[str]]] = field(default_factory=list)
    mutation: str | None = None

    @property
    def ok(self) -> bool:
        return not self.violations

    def as_dict(self) -> dict:
        return {"states": self.states, "ok": self.ok, "mutation": self.mutation,
                "violations": [{"what": w, "trace": steps} for w, steps in self.violations]}


def check(executors: int = 2, batches: int = 2, executions: int = 2,
          mutation: str | None = None, max_states: int = 3_000_000, *,
          kind: str = "call", path: str = "int3", signals: int = 0, patcher_signals: int = 0,
          sync_failures: int = 1) -> Result:
    """Explore every interleaving; return the number of states and the violations found (each
    with the trace of steps that reaches it).

    kind: how the handler runs the new version ("call": at its check; "inline": later, in the
    out-of-line slot).  path: "int3" (the three-step batch) or "rel32" (one aligned store).
    signals: signals each executor takes (each runs the site once, nested where it lands);
    patcher_signals: the same for the patcher's thread.  sync_failures: syncs that may fail in
    one run (each is retried)."""
    if not 1 <= batches < len(VERSIONS):
        raise ValueError(f"batches must be 1..{len(VERSIONS) - 1}")
    if mutation is not None and mutation not in MUTATIONS:
        raise ValueError(f"unknown mutation {mutation!r}; known: {', '.join(MUTATIONS)}")
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}; known: {', '.join(PATHS)}")
    if min(executors, executions, signals, patcher_signals, sync_failures) < 0 or executors < 1:
        raise ValueError("executors must be >= 1, the other counts >= 0")
    m = mutation
    rel32 = path == "rel32"

    # State: (mem, hist, seen, structs, live, batch, ppc, fails, actors)
    #   mem[p]      current value of byte p (0: first byte, 1: tail; for rel32 the tail is the
    #               displacement, two letters: its low and high halves)
    #   hist[p]     values byte p has held, oldest first
    #   seen[a][p]  oldest index in hist[p] actor a may still fetch
    #   structs[i]  (batch it holds, references) of batch struct i; live: the published one
    #   batch       index of the patcher's current batch; ppc its program counter
    #   fails       syncs that may still fail
    #   actors[a]   (frames, execs, signals left); the last actor is the patcher's thread, whose
    #               frames are signal frames only (the patcher runs when it has none)
    #   frame       (pc, fetched0, fetched1, struct held, batch held, version to run)
    def whole(v):
        return v + v if rel32 else v

    def version(v):
        return v[0] if rel32 else v

    mem0 = (C if rel32 else "O", whole("O"))
    hist0 = ((mem0[0],), (mem0[1],))
    base = ("fetch0", None, None, None, None, None)
    actors0 = tuple(((base,), 0, signals) for _ in range(executors)) + (((), 0, patcher_signals),)
    seen0 = tuple((0, 0) for _ in actors0)
    start = (mem0, hist0, seen0, (), -1, 0, "publish", sync_failures, actors0)
    PAT = executors  # index of the patcher's thread among the actors

    def write(state_mem, state_hist, p, v):
        mem = list(state_mem)
        hist = list(state_hist)
        mem[p] = v
        hist[p] = hist[p] + (v,)
        return tuple(mem), tuple(hist)

    def sync_ok(actors):
        return all(not fr or fr[-1][0] not in ("fetch1", "exec") for fr, _, _ in actors)

    def synced(hist, n):
        return tuple(tuple(len(h) - 1 for h in hist) for _ in range(n))

    def may_run(b, ppc):
        ok = {VERSIONS[min(b, batches)]}
        if ppc in OPEN[path]:
            ok.add(VERSIONS[b + 1])
        return ok

    def run_check(who, v, b, ppc, how):
        """None, or the violation of running version v now."""
        allowed = may_run(b, ppc)
        if v in allowed:
            return None
        if ppc == "done" or ppc == "publish" and b:
            when = f"batch {b} has returned"
        else:
            when = f"batch {b + 1} is at {ppc}"
        return (f"{who} {how} version {v} while the site may run only "
                f"{'/'.join(sorted(allowed))}: {when}")

    def successors(s):
        mem, hist, seen, structs, live, b, ppc, fails, actors = s
        out = []
        # ---- the patcher -----------------------------------------------------------------
        if ppc != "done" and not actors[PAT][0]:
            old, new = VERSIONS[b], VERSIONS[b + 1]
            nxt = None
            label = f"patcher {ppc} (batch {b + 1})"
            if ppc == "publish":
                if mem != (mem0[0] if rel32 else old, whole(old)):
                    out.append(("VIOLATION", f"batch {b + 1}: validation found {mem}"))
                    return out
                if rel32:
                    nxt = (mem, hist, seen, structs, live, b,
                           "store_lo" if m == "rel32_torn_store" else "store", fails, actors)
                elif kind == "inline" and m != "no_drain" and any(r for _, r in structs):
                    pass  # an inline slot of an earlier batch may still run: wait (writes nothing)
                else:
                    # Reclaim a struct no handler holds (reclaim_held: the first, held or not),
                    # else a new one.
                    free = [i for i, (_, r) in enumerate(structs)
                            if m == "reclaim_held" or r == 0]
                    st = list(structs)
                    if free:
                        i = free[0]
                        st[i] = (b, st[i][1])
                    else:
                        i = len(st)
                        st.append((b, 0))
                    label += f": struct {i}"
                    nxt = (mem, hist, seen, tuple(st), i, b, "int3", fails, actors)
            elif ppc == "int3":
                mm, hh = write(mem, hist, 0, new if m == "first_byte_early" else I)
                nxt = (mm, hh, seen, structs, live, b, "sync1", fails, actors)
            elif ppc in SYNCS:
                k, then, skip = SYNCS[ppc]
                if skip is not None and m == skip:
                    nxt = (mem, hist, seen, structs, live, b, then, fails, actors)
                    label = f"patcher skips sync #{k} (batch {b + 1})"
                elif sync_ok(actors):
                    nxt = (mem, hist, synced(hist, len(actors)), structs, live, b, then, fails,
                           actors)
                if fails:
                    # membarrier fails: nobody is serialised.  The rule: retry.
                    flabel = f"patcher sync #{k} fails (batch {b + 1})"
                    if m == "sync_failure_ignored":
                        out.append((flabel + ", ignored", (mem, hist, seen, structs, live, b,
                                                           then, fails - 1, actors)))
                    elif m == "sync_failure_gives_up":
                        if mem[0] != mem[1] and not rel32 or rel32 and mem[1] != whole(new):
                            out.append(("VIOLATION", f"batch {b + 1} gives up after a failed "
                                        f"sync #{k} and leaves the site as {mem}"))
                            return out
                    else:
                        out.append((flabel + ", retried", (mem, hist, seen, structs, live, b,
                                                           ppc, fails - 1, actors)))
            elif ppc == "tail":
                mm, hh = write(mem, hist, 1, new)
                nxt = (mm, hh, seen, structs, live, b, "sync2", fails, actors)
            elif ppc == "first":
                mm, hh = write(mem, hist, 0, new)
                nxt = (mm, hh, seen, structs, live, b, "sync3", fails, actors)
            elif ppc == "store":
                mm, hh = write(mem, hist, 1, whole(new))
                nxt = (mm, hh, seen, structs, live, b, "sync", fails, actors)
            elif ppc == "store_lo":
                mm, hh = write(mem, hist, 1, new + old)
                nxt = (mm, hh, seen, structs, live, b, "store_hi", fails, actors)
            elif ppc == "store_hi":
                mm, hh = write(mem, hist, 1, whole(new))
                nxt = (mm, hh, seen, structs, live, b, "sync", fails, actors)
            elif ppc == "unpublish":
                nxt = (mem, hist, seen, structs, -1, b, "readback", fails, actors)
            elif ppc == "readback":
                if mem != (mem0[0] if rel32 else new, whole(new)):
                    out.append(("VIOLATION", f"batch {b + 1}: read back {mem}"))
                    return out
                nb = b + 1
                nxt = (mem, hist, seen, structs, live, nb,
                       "publish" if nb < batches else "done", fails, actors)
                label = f"patcher reads back, returns (batch {b + 1})"
            if nxt is not None:
                out.append((label, nxt))

        # ---- the threads (executors, their trap and signal handlers; the patcher's signals) --
        for a, (frames, ex, sigs) in enumerate(actors):
            who = f"T{a}" if a != PAT else "patcher's thread"

            def put(frame, *, mem=mem, hist=hist, seen=seen, structs=structs, pop=False,
                    push=None, ex=ex, sigs=sigs):
                fr = list(frames)
                if pop:
                    fr.pop()
                elif frame is not None:
                    fr[-1] = frame
                if push is not None:
                    fr.append(push)
                acts = list(actors)
                acts[a] = (tuple(fr), ex, sigs)
                return (mem, hist, seen, structs, live, b, ppc, fails, tuple(acts))

            def finished(**kw):
                """One execution of the site done: a signal frame returns, a base frame goes
                round again or ends."""
                if a == PAT or len(frames) > 1:
                    return put(None, pop=True, **kw)
                nex = ex + 1
                return put(("fetch0" if nex < executions else "done",) + (None,) * 5, ex=nex,
                           **kw)

            if not frames:
                if a == PAT and sigs and ppc != "done":
                    out.append((f"{who} takes a signal; its handler runs the site",
                                put(None, push=base, sigs=sigs - 1)))
                continue
            pc, f0, f1, hs, hb, ver = frames[-1]
            if pc == "done":
                continue
            if sigs and pc in BOUNDARY and (a != PAT or ppc != "done"):
                out.append((f"{who} takes a signal at {pc}; its handler runs the site",
                            put(None, push=base, sigs=sigs - 1)))
            if pc in ("fetch0", "fetch1", "inner"):
                p = 0 if pc == "fetch0" else 1
                for idx in range(seen[a][p], len(hist[p])):
                    sn = list(seen)
                    row = list(sn[a])
                    row[p] = idx
                    sn[a] = tuple(row)
                    v = hist[p][idx]
                    label = f"{who} fetches byte {p} = {v}"
                    if pc == "inner":
                        if v != "O":
                            out.append(("VIOLATION", f"{who} resumes at the inner boundary of "
                                        f"the default rendering and executes the middle of "
                                        f"version {v} (byte 1 as an instruction start)"))
                            return out
                        bad = run_check(who, "O", b, ppc, "executes")
                        if bad:
                            out.append(("VIOLATION", bad))
                            return out
                        out.append((f"{who} executes the default's call (version O)",
                                    finished(seen=tuple(sn))))
                    elif p == 0 and v == "O" and m == "two_insn_default":
                        # The default as NOPs, then call: the NOPs are one instruction.
                        out.append((label + ", executes the NOPs: inner boundary",
                                    put(("inner", None, None, None, None, None),
                                        seen=tuple(sn))))
                    elif p == 0:
                        out.append((label, put(("fetch1", v, None, None, None, None),
                                               seen=tuple(sn))))
                    else:
                        out.append((label, put(("exec", f0, v, None, None, None),
                                               seen=tuple(sn))))
            elif pc == "exec":
                if f0 == I:
                    out.append((f"{who} traps", put(("h_load",) + (None,) * 5)))
                elif rel32 and f1[0] != f1[1] or not rel32 and f0 != f1:
                    what = (f"displacement halves {f1[0]}/{f1[1]}" if rel32
                            else f"first byte {f0}, tail {f1}")
                    out.append(("VIOLATION", f"{who} executes a torn site: {what}"))
                    return out
                else:
                    v = version(f1)
                    bad = run_check(who, v, b, ppc, "executes")
                    if bad:
                        out.append(("VIOLATION", bad))
                        return out
                    out.append((f"{who} executes version {v}", finished()))
            # The trap handler: load the live batch, take a reference, check it is still live,
            # look at the first byte; run the entry's new instruction or rewind.
            elif pc == "h_load":
                if live < 0:
                    out.append((f"{who} handler: no live batch, rewinds",
                                put(base)))
                else:
                    out.append((f"{who} handler: loads live batch (struct {live})",
                                put(("h_ref", None, None, live, None, None))))
            elif pc == "h_ref":
                st = list(structs)
                st[hs] = (st[hs][0], st[hs][1] + 1)
                then = "h_recheck" if m == "int3_check_late" else "h_look"
                out.append((f"{who} handler: refs+1 on struct {hs}",
                            put((then, None, None, hs, structs[hs][0], None),
                                structs=tuple(st))))
            elif pc == "h_look" and m != "int3_check_late":
                # Read the first byte while holding the reference, before the re-check: a
                # held struct is never published again once unpublished, so if it is still
                # live at the re-check, it was live when this byte was read, and an int3 then
                # was its own (every earlier batch ended with its new first byte in place).
                out.append((f"{who} handler: first byte is {mem[0]}",
                            put(("h_recheck", mem[0], None, hs, hb, None))))
            elif pc == "h_recheck" and m == "int3_check_late":
                if live != hs:
                    out.append((f"{who} handler: struct {hs} no longer live",
                                put(("h_drop", None, None, hs, None, None))))
                else:
                    out.append((f"{who} handler: struct {hs} live (batch {structs[hs][0] + 1})",
                                put(("h_look", None, None, hs, structs[hs][0], None))))
            elif pc in ("h_recheck", "h_look"):
                # The decision, made at the handler's last look at shared state (the re-check;
                # int3_check_late: the first byte, read after it).
                if pc == "h_recheck":
                    byte, what = f0, f"struct {hs} still live"
                    if structs[hs][0] != hb:
                        # Only reclaim_held gets here: the struct this handler holds since
                        # batch hb has been reused.
                        what += (f", but reused for batch {structs[hs][0] + 1} while held since "
                                 f"batch {hb + 1}")
                    hb = structs[hs][0]
                    if live != hs:
                        out.append((f"{who} handler: struct {hs} no longer live",
                                    put(("h_drop", None, None, hs, None, None))))
                        continue
                else:
                    byte, what = mem[0], f"first byte is {mem[0]}"
                if m == "no_int3_check":
                    byte = I
                if m == "handler_waits" and live == hs:
                    pass  # waits for the batch to end (the RFC's handler): no step
                elif byte != I:
                    # An int3 of an earlier batch, seen late, or this batch's first byte is
                    # already new: rewind and fetch again.
                    out.append((f"{who} handler: {what}, site held {byte}, not int3: rewind",
                                put(("h_drop", None, None, hs, hb, None))))
                else:
                    # From here the thread runs batch hb's entry.  A call (or NOP) counts as
                    # executed now: the entry is immutable while held, and a thread that has
                    # decided is, for every other thread, inside the callee.
                    v = VERSIONS[hb] if m == "emulate_old" else VERSIONS[hb + 1]
                    if kind == "call":
                        bad = run_check(who, v, b, ppc, "handler emulates")
                        if bad:
                            if "reused" in what:
                                bad += f" ({what})"
                            out.append(("VIOLATION", bad))
                            return out
                    out.append((f"{who} handler: {what}, int3 of batch {hb + 1}: runs its entry",
                                put(("h_entry", None, None, hs, hb, None))))
            elif pc == "h_entry":
                cb = structs[hs][0]
                v = VERSIONS[cb] if m == "emulate_old" else VERSIONS[cb + 1]
                if cb != hb:
                    out.append(("VIOLATION", f"{who} handler holds batch {hb + 1} but reads "
                                f"batch {cb + 1}'s entry from struct {hs}, reclaimed while "
                                f"held: it runs version {v}"))
                    return out
                if kind == "inline":
                    out.append((f"{who} handler: reads the entry, returns into the out-of-line "
                                f"slot of version {v}", put(("h_slot", None, None, hs, hb, v))))
                else:
                    out.append((f"{who} handler: reads the entry, emulates the call of version "
                                f"{v}", put(("h_drop", None, None, hs, hb, v))))
            elif pc == "h_slot":
                bad = run_check(who, ver, b, ppc, "runs out of line")
                if bad:
                    out.append(("VIOLATION", bad))
                    return out
                st = list(structs)
                st[hs] = (st[hs][0], st[hs][1] - 1)
                out.append((f"{who} runs version {ver} out of line; the slot drops the reference",
                            finished(structs=tuple(st))))
            elif pc == "h_drop":
                st = list(structs)
                st[hs] = (st[hs][0], st[hs][1] - 1)
                if ver is None:
                    out.append((f"{who} handler: refs-1, rewinds",
                                put(base, structs=tuple(st))))
                else:
                    out.append((f"{who} handler: refs-1, returns into version {ver}",
                                finished(structs=tuple(st))))
        return out

    def final(s):
        return s[6] == "done" and all(not fr or fr[-1][0] == "done" for fr, _, _ in s[8])

    return _search(start, successors, final, max_states, mutation)


def _search(start, successors, final, max_states, mutation=None) -> Result:
    """Breadth first over every reachable state; stop at the first violation, with the trace."""
    parent: dict = {start: None}
    queue = deque([start])
    result = Result(0, mutation=mutation)

    def trace(s, last):
        steps = [last]
        while parent[s] is not None:
            s, step = parent[s]
            steps.append(step)
        return steps[::-1]

    while queue:
        s = queue.popleft()
        result.states += 1
        if result.states > max_states:
            result.violations.append(("state space too large", []))
            break
        succ = successors(s)
        if not succ and not final(s):
            result.violations.append(("stuck: no step enabled", trace(s, "(stuck)")))
            break
        for step, nxt in succ:
            if step == "VIOLATION":
                result.violations.append((nxt, trace(s, nxt)))
                return result
            if nxt not in parent:
                parent[nxt] = (s, step)
                queue.append(nxt)
    return result


def main() -> int:
    import argparse
    import json
    import time

    ap = argparse.ArgumentParser(prog="python -m pvpatch.model", description=__doc__.split("\n")[0])
    ap.add_argument("--executors", type=int)
    ap.add_argument("--batches", type=int)
    ap.add_argument("--executions", type=int)
    ap.add_argument("--kind", choices=KINDS,
                    help="how the handler runs the new version (default: call)")
    ap.add_argument("--path", choices=PATHS,
                    help="int3: the three-step batch (default); rel32: one aligned store")
    ap.add_argument("--signals", type=int,
                    help="signals each executor takes; each runs the site, nested where it lands")
    ap.add_argument("--patcher-signals", type=int, help="signals the patcher's thread takes")
    ap.add_argument("--sync-failures", type=int,
                    help="syncs that may fail (and are retried) in one run (default: 1)")
    ap.add_argument("--mutation", choices=MUTATIONS,
                    help="switch off one piece; options not given take the mutation's "
                         "configuration (MUTATION_CONFIG), then the defaults")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    a = ap.parse_args()
    cfg = dict(MUTATION_CONFIG.get(a.mutation, {}))
    for k in ("executors", "batches", "executions", "kind", "path", "signals",
              "patcher_signals", "sync_failures"):
        if getattr(a, k) is not None:
            cfg[k] = getattr(a, k)
    t0 = time.perf_counter()
    try:
        r = check(mutation=a.mutation, **cfg)
    except ValueError as e:
        ap.error(str(e))
    if a.json:
        d = r.as_dict()
        d["seconds"] = round(time.perf_counter() - t0, 3)
        print(json.dumps(d, indent=1))
        return 0 if r.ok else 1
    print(f"{r.states} states explored")
    for what, steps in r.violations:
        print(f"VIOLATION: {what}")
        for i, step in enumerate(steps, 1):
            print(f"  {i:3d}. {step}")
    if r.ok:
        print("no torn execution, every execution allowed, read-backs correct, never stuck")
    return 0 if r.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
