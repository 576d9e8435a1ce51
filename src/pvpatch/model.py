"""An exhaustive model of the batch protocol (src/pvpatch/_core/poke.c, docs/protocol.md).

Every interleaving of one patcher and N executor threads over one site is explored, breadth
first (by pvpatch.explore, the search the lock model shares), and these things are checked in
every reachable state:

- no thread executes a torn instruction (first byte of one version, tail of another; for the
  rel32 path, half of one displacement and half of another), nor starts an instruction at a
  byte that is not an instruction boundary;
- every instruction a thread executes, fetched, emulated by the trap handler or run from an
  out-of-line slot, is one the site may run at that moment: the current version, or the live
  batch's new version once that batch has written its int3 (or its rel32 store); once the batch
  has returned, only its new version (a batch that returned an error: its old one; and while no
  sync has succeeded since, whatever a thread may still hold stale);
- a trap on an int3 of ours is never taken for a foreign one (that goes to the previous
  handler: with none, the process dies);
- the patcher's read-back after each batch finds the new bytes, and no batch returns, even with
  an error, leaving the site mixed;
- no state is stuck, and from every state the end stays reachable (no deadlock, no livelock:
  a thread bouncing between site and slot while the patcher is suspended is one).

The site has a first byte and a tail.  Values: O (before), N (after batch 1), P (after batch 2),
Q (after batch 3), I (int3).  Memory is modelled as x86 code really behaves for another thread:
a thread may fetch any value written to a byte since its last serialisation (stale instruction
bytes), never an older one than it already saw; a sync (membarrier SYNC_CORE) serialises every
thread, and it can only happen while no thread is between fetching and executing an
instruction, because the IPI lands on instruction boundaries.  A sync may fail (membarrier
returns an error, nobody is serialised): the batch then ends as docs/protocol.md ("A failed
sync") says: at sync #1 the old first byte goes back and the batch is unpublished; at sync #2 it
is parked (old tail behind the int3, handlers emulating the old rendering, still live) until the
next batch syncs, restores the old first byte and unpublishes; at sync #3 it is committed.

The trap handler (poke.c, dispatch; rules H1-H5 of docs/protocol.md) writes no code and issues
no sync.  H1: it loads live_seq, the site's pending word, the site's first byte, live_seq again,
and starts over if the two differ.  H2: if a batch is live, the pending word carries its
generation and the first byte is int3, it runs the pending word's instruction: a call (or NOP)
counts as executed there, since from then on the thread is, for every other thread, inside the
callee; an inline rendering is run later from its out-of-line slot, which the handler sends the
thread to after serialising.  H3: a first byte that is not int3: rewind.  H4: a trap on a
disarmed slot is a trap on its site.  H5: anything else is foreign.  The patcher writes the
pending word and arms the slot (its first byte becomes the instruction's) before publishing,
and disarms the slot (int3) after the first byte, before sync #3.

A thread may take a signal at any instruction boundary, including inside the trap handler; the
signal handler runs the site once (and may trap, nested in the interrupted handler).  The
patcher's own thread may take one too, while the patcher is suspended.

The rel32 path (`path="rel32"`): a call->call retarget whose rel32 field lies in one aligned
8-byte word is one aligned store of the field and one sync; no int3, no handler.

Mutations switch off one piece of the protocol each; the tests show the model then finds the
failure it guards against, so the model is not vacuous.  Each has the configuration under
which it shows (MUTATION_CONFIG).
"""
from __future__ import annotations

from .explore import Result, explore, report

I = "I"
C = "C"                             # the rel32 path's opcode byte, never written
VERSIONS = ("O", "N", "P", "Q")     # the site's bytes before batch 1, after batch 1, 2, 3
# The patcher's syncs: program counter -> (sync number, next step, mutation that skips it).
SYNCS = {"sync1": (1, "tail", "no_sync1"), "sync2": (2, "first", "no_sync2"),
         "sync3": (3, "unpublish", None), "sync": (1, "readback", "rel32_no_sync"),
         "unpark_sync": (0, "unpark_first", None)}
# Where the batch's new version may run: during the call (runtime_patch's contract: either
# version while it runs), that is from step 0 to its return; strict: only from its int3 (or its
# store) on.
CLOSED = ("publish", "done")
STRICT_OPEN = {"int3": ("sync1", "tail", "sync2", "first", "first_late", "disarm", "sync3",
                        "unpublish",
                        "readback", "rb_first", "rb_disarm", "rb_unpublish", "park_tail",
                        "park_disarm", "park_pending"),
               "rel32": ("store_hi", "sync", "readback")}
# Program counters where a thread is between instructions (a signal or a sync may land there).
BOUNDARY = ("fetch0", "inner", "slot", "h_seq1", "h_pend", "h_byte", "h_seq2")
KINDS = ("call", "inline")
PATHS = ("int3", "rel32")
MUTATIONS = ("no_sync1", "no_sync2", "first_byte_early", "no_int3_check", "no_seqlock",
             "emulate_old", "park_emulates_new", "no_disarm", "disarm_before_first", "two_insn_default",
             "sync_failure_ignored", "sync_failure_gives_up", "handler_waits",
             "rel32_torn_store", "rel32_no_sync")
# The smallest configuration under which each mutation shows (all else as check()'s defaults).
MUTATION_CONFIG = {
    "no_int3_check": {"strict": True},
    "no_seqlock": {"executors": 1, "batches": 3, "executions": 3},
    "emulate_old": {"kind": "inline", "executors": 1, "executions": 1, "patcher_signals": 1},
    "park_emulates_new": {"executors": 1, "sync_failures": 1},
    "sync_failure_ignored": {"executors": 1, "sync_failures": 1},
    "sync_failure_gives_up": {"executors": 1, "sync_failures": 1},
    "no_disarm": {"kind": "inline", "executors": 1},
    "disarm_before_first": {"kind": "inline", "executors": 1, "executions": 1,
                            "patcher_signals": 1},
    "handler_waits": {"executors": 1, "executions": 1, "patcher_signals": 1},
    "rel32_torn_store": {"path": "rel32"},
    "rel32_no_sync": {"path": "rel32"},
}


def check(executors: int = 2, batches: int = 2, executions: int = 2,
          mutation: str | None = None, max_states: int = 3_000_000, *,
          kind: str = "call", path: str = "int3", signals: int = 0, patcher_signals: int = 0,
          sync_failures: int = 0, strict: bool = False) -> Result:
    """Explore every interleaving; return the number of states and the violations found (each
    with the trace of steps that reaches it).

    kind: how the handler runs the new version ("call": at its decision; "inline": later, from
    the out-of-line slot).  path: "int3" (the three-step batch) or "rel32" (one aligned store).
    signals: signals each executor takes (each runs the site once, nested where it lands);
    patcher_signals: the same for the patcher's thread.  sync_failures: syncs that may fail in
    one run.  strict: a batch's new version may run only from its int3 on, not from the start
    of the call."""
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
    inline = kind == "inline" and not rel32

    # State: (mem, hist, seen, seq, pend, batch, ppc, fails, stale, parked, actors)
    #   mem[p]      current value of byte p: 0 the site's first byte, 1 its tail (for rel32 the
    #               displacement, two letters: its low and high halves), 2.. the first byte of
    #               the out-of-line slot of N, P, Q (inline: armed = the version, disarmed = I)
    #   hist[p]     values byte p has held, oldest first
    #   seen[a][p]  oldest index in hist[p] actor a may still fetch
    #   seq         live_seq (odd: a batch is live); pend the site's pending word (gen, version)
    #   batch       index of the patcher's current batch; ppc its program counter
    #   fails       syncs that may still fail
    #   stale       a version threads may still run after a failed sync, until a sync succeeds
    #   parked      the batch parked after a failed sync #2 (live until the next batch)
    #   actors[a]   (frames, execs, signals left); the last actor is the patcher's thread, whose
    #               frames are signal frames only (the patcher runs when it has none)
    #   frame       (pc, fetched0, fetched1, x, y, z): x, y, z per pc (the handler's snapshot;
    #               the slot's version)
    def whole(v):
        return v + v if rel32 else v

    def slot(v):
        return 1 + VERSIONS.index(v)

    nslots = len(VERSIONS) - 1 if inline else 0
    mem0 = (C if rel32 else "O", whole("O")) + (I,) * nslots
    hist0 = tuple((v,) for v in mem0)
    base = ("fetch0", None, None, None, None, None)
    actors0 = tuple(((base,), 0, signals) for _ in range(executors)) + (((), 0, patcher_signals),)
    seen0 = tuple((0,) * len(mem0) for _ in actors0)
    start = (mem0, hist0, seen0, 0, None, 0, "publish", sync_failures, None, False, actors0)
    PAT = executors  # index of the patcher's thread among the actors

    def write(state_mem, state_hist, p, v):
        mem = list(state_mem)
        hist = list(state_hist)
        mem[p] = v
        hist[p] = hist[p] + (v,)
        return tuple(mem), tuple(hist)

    def sync_ok(actors):
        return all(not fr or fr[-1][0] not in ("fetch1", "exec", "slot_exec")
                   for fr, _, _ in actors)

    def latest(hist):
        return tuple(len(h) - 1 for h in hist)

    def may_run(b, ppc, stale):
        ok = {VERSIONS[min(b, batches)]}
        if ppc in STRICT_OPEN[path] if strict else ppc not in CLOSED:
            ok.add(VERSIONS[b + 1])
        if stale:
            ok.add(stale)
        return ok

    def run_check(who, v, b, ppc, stale, how):
        """None, or the violation of running version v now."""
        allowed = may_run(b, ppc, stale)
        if v in allowed:
            return None
        if ppc == "done" or ppc == "publish" and b:
            when = f"batch {b} has returned"
        else:
            when = f"batch {b + 1} is at {ppc}"
        return (f"{who} {how} version {v} while the site may run only "
                f"{'/'.join(sorted(allowed))}: {when}")

    def successors(s):
        mem, hist, seen, seq, pend, b, ppc, fails, stale, parked, actors = s
        out = []

        def pat(ppc2, *, mem=mem, hist=hist, seen=seen, seq=seq, pend=pend, b=b, fails=fails,
                stale=stale, parked=parked):
            return (mem, hist, seen, seq, pend, b, ppc2, fails, stale, parked, actors)

        # ---- the patcher -----------------------------------------------------------------
        if ppc != "done" and not actors[PAT][0]:
            old, new = VERSIONS[b], VERSIONS[b + 1]
            nxt = None
            label = f"patcher {ppc} (batch {b + 1})"
            if ppc == "publish" and parked:
                nxt = pat("unpark_sync")
                label = f"patcher finds batch {b + 1} parked: restores it first"
            elif ppc == "publish":
                # Step 0: validate; pending word and slot, then publish.
                if mem[:2] != (mem0[0] if rel32 else old, whole(old)):
                    out.append(("VIOLATION", f"batch {b + 1}: validation found {mem[:2]}"))
                    return out
                if rel32:
                    nxt = pat("store_lo" if m == "rel32_torn_store" else "store")
                else:
                    mm, hh = write(mem, hist, slot(new), new) if inline else (mem, hist)
                    nxt = pat("publish2", mem=mm, hist=hh, pend=(seq + 1, new))
                    label += ": pending word" + (", arms the slot" if inline else "")
            elif ppc == "publish2":
                nxt = pat("int3", seq=seq + 1)
                label = f"patcher publishes (batch {b + 1})"
            elif ppc == "int3":
                mm, hh = write(mem, hist, 0, new if m == "first_byte_early" else I)
                nxt = pat("sync1", mem=mm, hist=hh)
            elif ppc in SYNCS:
                k, then, skip = SYNCS[ppc]
                name = f"sync #{k}" if k else "its first sync"
                if skip is not None and m == skip:
                    nxt = pat(then)
                    label = f"patcher skips {name} (batch {b + 1})"
                elif sync_ok(actors):
                    nxt = pat(then, seen=tuple(latest(hist) for _ in actors), stale=None)
                    label = f"patcher {name} (batch {b + 1})"
                if fails:
                    flabel = f"patcher {name} fails (batch {b + 1})"
                    if m == "sync_failure_ignored":
                        out.append((flabel + ", ignored", pat(then, fails=fails - 1)))
                    elif m == "sync_failure_gives_up" and ppc == "sync2":
                        out.append(("VIOLATION", f"batch {b + 1} gives up after a failed "
                                    f"sync #2 and leaves the site as {mem[:2]}"))
                        return out
                    elif ppc == "sync1":
                        out.append((flabel + ": rolls back", pat("rb_first", fails=fails - 1)))
                    elif ppc == "sync2":
                        out.append((flabel + ": parks", pat("park_tail", fails=fails - 1)))
                    elif ppc == "unpark_sync":
                        # Raises and changes nothing; the batch stays parked.
                        out.append((flabel + ": raises, still parked",
                                    pat("publish", fails=fails - 1)))
                    else:  # sync #3, the rel32 sync: committed, reported
                        out.append((flabel + ": committed, raises",
                                    pat(then, fails=fails - 1, stale=old if rel32 else stale)))
            elif ppc == "rb_first":
                mm, hh = write(mem, hist, 0, old)
                nxt = pat("rb_disarm", mem=mm, hist=hh)
                label = f"patcher writes the old first byte back (batch {b + 1})"
            elif ppc == "rb_disarm":
                mm, hh = write(mem, hist, slot(new), I) if inline else (mem, hist)
                nxt = pat("rb_unpublish", mem=mm, hist=hh)
            elif ppc == "rb_unpublish":
                # Returns the error; the caller tries the same batch again.  A thread sent to
                # the slot may still fetch it armed: nothing was synced.
                if mem[:2] != (old, old):
                    out.append(("VIOLATION", f"batch {b + 1} returns an error leaving the site "
                                f"as {mem[:2]}"))
                    return out
                nxt = pat("publish", seq=seq + 1, pend=None,
                          stale=new if inline else stale)
                label = f"patcher unpublishes, raises (batch {b + 1})"
            elif ppc == "park_tail":
                mm, hh = write(mem, hist, 1, old)
                nxt = pat("park_disarm", mem=mm, hist=hh)
                label = f"patcher writes the old tail back behind the int3 (batch {b + 1})"
            elif ppc == "park_disarm":
                mm, hh = write(mem, hist, slot(new), I) if inline else (mem, hist)
                nxt = pat("park_pending", mem=mm, hist=hh)
            elif ppc == "park_pending":
                v = new if m == "park_emulates_new" else old
                mm, hh = mem, hist
                if inline and v != "O":
                    mm, hh = write(mem, hist, slot(v), v)
                nxt = pat("publish", mem=mm, hist=hh, pend=(seq, v), parked=True,
                          stale=new if inline else stale)
                label = (f"patcher: pending word emulates {v}, batch parked, raises "
                         f"(batch {b + 1})")
            elif ppc == "unpark_first":
                mm, hh = write(mem, hist, 0, old)
                nxt = pat("unpark_unpublish", mem=mm, hist=hh)
                label = f"patcher writes the old first byte (parked batch {b + 1})"
            elif ppc == "unpark_unpublish":
                mm, hh = mem, hist
                if inline and pend and pend[1] != "O":
                    mm, hh = write(mem, hist, slot(pend[1]), I)
                nxt = pat("publish", mem=mm, hist=hh, seq=seq + 1, pend=None, parked=False)
                label = f"patcher disarms, unpublishes the parked batch {b + 1}"
            elif ppc == "tail":
                mm, hh = write(mem, hist, 1, new)
                nxt = pat("sync2", mem=mm, hist=hh)
            elif ppc == "first" and inline and m == "disarm_before_first":
                mm, hh = write(mem, hist, slot(new), I)
                nxt = pat("first_late", mem=mm, hist=hh)
                label = f"patcher disarms the slot before the first byte (batch {b + 1})"
            elif ppc in ("first", "first_late"):
                mm, hh = write(mem, hist, 0, new)
                nxt = pat("disarm" if ppc == "first" else "sync3", mem=mm, hist=hh)
            elif ppc == "disarm":
                mm, hh = mem, hist
                if inline and m not in ("no_disarm", "disarm_before_first"):
                    mm, hh = write(mem, hist, slot(new), I)
                nxt = pat("sync3", mem=mm, hist=hh)
            elif ppc == "store":
                mm, hh = write(mem, hist, 1, whole(new))
                nxt = pat("sync", mem=mm, hist=hh)
            elif ppc == "store_lo":
                mm, hh = write(mem, hist, 1, new + old)
                nxt = pat("store_hi", mem=mm, hist=hh)
            elif ppc == "store_hi":
                mm, hh = write(mem, hist, 1, whole(new))
                nxt = pat("sync", mem=mm, hist=hh)
            elif ppc == "unpublish":
                nxt = pat("readback", seq=seq + 1, pend=None)
            elif ppc == "readback":
                if mem[:2] != (mem0[0] if rel32 else new, whole(new)):
                    out.append(("VIOLATION", f"batch {b + 1}: read back {mem[:2]}"))
                    return out
                nb = b + 1
                nxt = pat("publish" if nb < batches else "done", b=nb)
                label = f"patcher reads back, returns (batch {b + 1})"
            if nxt is not None:
                out.append((label, nxt))

        # ---- the threads (executors, their trap and signal handlers; the patcher's signals) --
        for a, (frames, ex, sigs) in enumerate(actors):
            who = f"T{a}" if a != PAT else "patcher's thread"

            def put(frame, *, mem=mem, hist=hist, seen=seen, pop=False, push=None, ex=ex,
                    sigs=sigs):
                fr = list(frames)
                if pop:
                    fr.pop()
                elif frame is not None:
                    fr[-1] = frame
                if push is not None:
                    fr.append(push)
                acts = list(actors)
                acts[a] = (tuple(fr), ex, sigs)
                return (mem, hist, seen, seq, pend, b, ppc, fails, stale, parked, tuple(acts))

            def finished(**kw):
                """One execution of the site done: a signal frame returns, a base frame goes
                round again or ends."""
                if a == PAT or len(frames) > 1:
                    return put(None, pop=True, **kw)
                nex = ex + 1
                return put(("fetch0" if nex < executions else "done",) + (None,) * 5, ex=nex,
                           **kw)

            def fetched(p, idx):
                sn = list(seen)
                row = list(sn[a])
                row[p] = idx
                sn[a] = tuple(row)
                return tuple(sn)

            def violation(what):
                out.append(("VIOLATION", what))
                return out

            if not frames:
                if a == PAT and sigs and ppc != "done":
                    out.append((f"{who} takes a signal; its handler runs the site",
                                put(None, push=base, sigs=sigs - 1)))
                continue
            pc, f0, f1, x, y, z = frames[-1]
            if pc == "done":
                continue
            if sigs and pc in BOUNDARY and (a != PAT or ppc != "done"):
                out.append((f"{who} takes a signal at {pc}; its handler runs the site",
                            put(None, push=base, sigs=sigs - 1)))
            if pc in ("fetch0", "fetch1", "inner", "slot"):
                p = {"fetch0": 0, "fetch1": 1, "inner": 1, "slot": None}[pc]
                if p is None:
                    p = slot(x)
                for idx in range(seen[a][p], len(hist[p])):
                    v = hist[p][idx]
                    sn = fetched(p, idx)
                    label = f"{who} fetches byte {p} = {v}"
                    if pc == "slot":
                        if v == I:
                            out.append((f"{who} fetches the slot of {x}: int3 (disarmed), traps",
                                        put(("h_seq1", None, "slot", None, None, None),
                                            seen=sn)))
                        else:
                            out.append((f"{who} fetches the slot of {x}: armed",
                                        put(("slot_exec", None, None, x, None, None), seen=sn)))
                    elif pc == "inner":
                        if v != "O":
                            return violation(f"{who} resumes at the inner boundary of the "
                                             f"default rendering and executes the middle of "
                                             f"version {v} (byte 1 as an instruction start)")
                        bad = run_check(who, "O", b, ppc, stale, "executes")
                        if bad:
                            return violation(bad)
                        out.append((f"{who} executes the default's call (version O)",
                                    finished(seen=sn)))
                    elif p == 0 and v == "O" and m == "two_insn_default":
                        # The default as NOPs, then call: the NOPs are one instruction.
                        out.append((label + ", executes the NOPs: inner boundary",
                                    put(("inner",) + (None,) * 5, seen=sn)))
                    elif p == 0:
                        out.append((label, put(("fetch1", v, None, None, None, None), seen=sn)))
                    else:
                        out.append((label, put(("exec", f0, v, None, None, None), seen=sn)))
            elif pc == "exec":
                if f0 == I:
                    out.append((f"{who} traps", put(("h_seq1",) + (None,) * 5)))
                elif rel32 and f1[0] != f1[1] or not rel32 and f0 != f1:
                    what = (f"displacement halves {f1[0]}/{f1[1]}" if rel32
                            else f"first byte {f0}, tail {f1}")
                    return violation(f"{who} executes a torn site: {what}")
                else:
                    v = f1[0] if rel32 else f1
                    bad = run_check(who, v, b, ppc, stale, "executes")
                    if bad:
                        return violation(bad)
                    out.append((f"{who} executes version {v}", finished()))
            elif pc == "slot_exec":
                bad = run_check(who, x, b, ppc, stale, "runs from the slot")
                if bad:
                    return violation(bad)
                out.append((f"{who} runs version {x} from the slot, jumps to the site end",
                            finished()))
            # The trap handler, H1: live_seq, pending word, first byte, live_seq again.
            # (f1 == "slot": the trap was on a disarmed slot, H4.)  f0 collects the versions the
            # site may run at the instants of these loads: a snapshot taken with no publish or
            # unpublish in between held at one of them (the pending word and the first byte
            # each change at most once in one generation, the byte to int3 before the word),
            # so the call the handler emulates takes effect there (linearisation point).
            elif pc == "h_seq1":
                ok = "".join(sorted(may_run(b, ppc, stale)))
                out.append((f"{who} handler: live_seq = {seq}",
                            put(("h_pend", ok, f1, seq, None, None))))
            elif pc == "h_pend":
                ok = "".join(sorted(set(f0) | may_run(b, ppc, stale)))
                out.append((f"{who} handler: pending word = {pend}",
                            put(("h_byte", ok, f1, x, pend, None))))
            elif pc == "h_byte":
                ok = "".join(sorted(set(f0) | may_run(b, ppc, stale)))
                out.append((f"{who} handler: first byte = {mem[0]}",
                            put(("h_seq2", ok, f1, x, y, mem[0]))))
            elif pc == "h_seq2":
                s1, pw, byte = x, y, z
                if seq != s1 and m != "no_seqlock":
                    out.append((f"{who} handler: live_seq = {seq}, changed: again",
                                put(("h_seq1", None, f1, None, None, None))))
                    continue
                live = s1 % 2 == 1 and pw is not None and pw[0] == s1
                if m == "handler_waits" and live and seq == s1:
                    continue  # waits for the batch to end (the RFC's handler): no step
                if live and (byte == I or m == "no_int3_check"):
                    # H2.  The decision: the pending word's version runs in the thread's place.
                    v = VERSIONS[b] if m == "emulate_old" else pw[1]
                    if inline and v != "O":
                        sn = list(seen)
                        sn[a] = latest(hist)  # serialise (cpuid), then RIP = slot
                        out.append((f"{who} handler: H2, serialises, sends the thread to the "
                                    f"slot of {v}", put(("slot", None, None, v, None, None),
                                                        seen=tuple(sn))))
                    elif v not in set(f0) | may_run(b, ppc, stale):
                        return violation(run_check(who, v, b, ppc, stale, "handler emulates")
                                         + f" (and only {'/'.join(f0)} during its snapshot)")
                    else:
                        out.append((f"{who} handler: H2, emulates the call of version {v}",
                                    finished()))
                elif byte != I or f1 == "slot":
                    why = "H3, site whole" if byte != I else "H4, site int3 not ours"
                    out.append((f"{who} handler: {why}: rewinds", put(base)))
                else:
                    return violation(f"{who} handler: an int3 of ours, but no live batch holds "
                                     f"the site (live_seq {s1}, pending word {pw}): taken as "
                                     f"foreign, the process dies of SIGTRAP")
        return out

    def final(s):
        return s[6] == "done" and all(not fr or fr[-1][0] == "done" for fr, _, _ in s[10])

    def go_round(steps):
        # Follow the patcher's thread where it has a step: it is usually the one caught.
        return next((x for x in steps if x[0].startswith("patcher's thread")), steps[0])

    r = explore(start, successors, final=final, liveness=True, max_states=max_states,
                livelock="livelock: the end is unreachable (steps go round for ever)",
                go_round=go_round)
    r.mutation = mutation
    r.config = {"protocol": "batch", "executors": executors, "batches": batches,
                "executions": executions, "kind": kind, "path": path, "signals": signals,
                "patcher_signals": patcher_signals, "sync_failures": sync_failures,
                "strict": strict}
    return r


def main(argv=None) -> int:
    import argparse
    import json
    import sys

    # --protocol lock: the lock-switching model (pvpatch.model_lock), with its own options.
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--protocol", choices=("batch", "lock"), default="batch")
    p, rest = pre.parse_known_args(sys.argv[1:] if argv is None else argv)
    if p.protocol == "lock":
        from . import model_lock
        return model_lock.main(rest)

    ap = argparse.ArgumentParser(prog="python -m pvpatch.model", description=__doc__.split("\n")[0],
                                 epilog="--protocol lock: the lock-switching model "
                                        "(python -m pvpatch.model --protocol lock --help)")
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
                    help="syncs that may fail in one run (default: 0)")
    ap.add_argument("--strict", action="store_true", default=None,
                    help="a batch's new version may run only from its int3 on (default: from "
                         "the start of the call, runtime_patch's contract)")
    ap.add_argument("--mutation", choices=MUTATIONS,
                    help="switch off one piece; options not given take the mutation's "
                         "configuration (MUTATION_CONFIG), then the defaults")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    a = ap.parse_args(rest)
    cfg = dict(MUTATION_CONFIG.get(a.mutation, {}))
    for k in ("executors", "batches", "executions", "kind", "path", "signals",
              "patcher_signals", "sync_failures", "strict"):
        if getattr(a, k) is not None:
            cfg[k] = getattr(a, k)
    try:
        r = check(mutation=a.mutation, **cfg)
    except ValueError as e:
        ap.error(str(e))
    if a.json:
        print(json.dumps(r.as_dict(), indent=1))
        return 0 if r.ok else 1
    report(r, "no torn execution, every execution allowed, read-backs correct, never stuck, "
              "no livelock", header=f"{r.states} states explored")
    return 0 if r.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
