"""An exhaustive model of the batch protocol (src/pvpatch/_core/poke.c, docs/protocol.md).

Every interleaving of one patcher and N executor threads over one site is explored, breadth
first, and three things are checked in every reachable state:

- no thread executes a torn instruction (first byte of one version, tail of another);
- the patcher's read-back after each batch finds the new bytes;
- no state is stuck (some step is always enabled until everyone is done).

The site has a first byte and one tail byte.  Values: O (before), N (after batch 1), P (after
batch 2), I (int3).  Memory is modelled as x86 code really behaves for another thread: a thread
may fetch any value written to a byte since its last serialisation (stale instruction bytes), never
an older one than it already saw; a sync (membarrier SYNC_CORE) serialises every thread, and it
can only happen while no thread is between fetching and executing an instruction, because the
IPI lands on instruction boundaries.

Mutations switch off one piece of the protocol each; the tests show the model then finds the
failure it guards against, so the model is not vacuous.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .explore import explore

I = "I"
VERSIONS = ("O", "N", "P", "Q")     # the site's bytes before batch 1, after batch 1, 2, 3
# The patcher's syncs: program counter -> (state reached, next step, mutation that skips it).
SYNCS = {"sync1": (1, "tail", "no_sync1"), "sync2": (2, "first", "no_sync2"),
         "sync3": (3, "retire", None)}
# The handler's steps (complete_site in poke.c): sync k -> raise the state to k -> next.
HANDLER_SYNCS = {"h_s1": (1, "h_r1"), "h_s2": (2, "h_r2"), "h_s3": (3, "h_r3")}
HANDLER_RAISES = {"h_r1": (1, "h_tail"), "h_r2": (2, "h_first"), "h_r3": (3, "h_drop")}
MUTATIONS = ("no_sync1", "no_sync2", "no_refs_wait", "helper_no_sync", "first_byte_early",
             "helper_ignores_byte")


@dataclass
class Result:
    states: int
    violations: list[tuple[str, list[str]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


def check(executors: int = 2, batches: int = 2, executions: int = 2,
          mutation: str | None = None, max_states: int = 2_000_000) -> Result:
    """Explore every interleaving; return the number of states and the violations found (each
    with the trace of steps that reaches it)."""
    if not 1 <= batches < len(VERSIONS):
        raise ValueError(f"batches must be 1..{len(VERSIONS) - 1}")
    if mutation is not None and mutation not in MUTATIONS:
        raise ValueError(f"unknown mutation {mutation!r}; known: {', '.join(MUTATIONS)}")
    m = mutation

    # State: (mem, hist, seen, live, refs, st, batch, ppc, threads)
    #   mem[p]      current value of byte p (0: first byte, 1: tail)
    #   hist[p]     values byte p has held, oldest first
    #   seen[t][p]  oldest index in hist[p] thread t may still fetch
    #   live        published batch (the struct is reused: True/False), refs its handler count
    #   st          the site's state in the live batch: 0 none, 1 int3 synced, 2 tail, 3 done
    #   batch       index of the patcher's current batch; ppc its program counter
    #   threads[t]  (pc, fetched0, fetched1, held_batch, st_seen, execs)
    mem0 = ("O", "O")
    hist0 = (("O",), ("O",))
    threads0 = tuple(("fetch0", None, None, None, None, 0) for _ in range(executors))
    seen0 = tuple((0, 0) for _ in range(executors))
    start = (mem0, hist0, seen0, False, 0, 0, 0, "publish", threads0)

    def write(state_mem, state_hist, p, v):
        mem = list(state_mem)
        hist = list(state_hist)
        mem[p] = v
        hist[p] = hist[p] + (v,)
        return tuple(mem), tuple(hist)

    def sync_ok(threads):
        return all(t[0] != "fetch1" and t[0] != "exec" for t in threads)

    def synced(hist, n):
        return tuple(tuple(len(h) - 1 for h in hist) for _ in range(n))

    def new_of(b):
        return VERSIONS[b + 1]

    def successors(s):
        mem, hist, seen, live, refs, st, b, ppc, threads = s
        out = []
        # ---- the patcher ---------------------------------------------------------------
        if ppc != "done":
            old, new = VERSIONS[b], new_of(b)
            nxt = None
            if ppc == "publish":
                if mem != (old, old):
                    out.append(("VIOLATION", f"batch {b + 1}: validation found {mem}"))
                    return out
                nxt = (mem, hist, seen, True, refs, 0, b, "int3", threads)
            elif ppc == "int3":
                v = new if m == "first_byte_early" else I
                mm, hh = write(mem, hist, 0, v) if st < 1 else (mem, hist)
                nxt = (mm, hh, seen, live, refs, st, b, "sync1", threads)
            elif ppc in SYNCS:
                # Step k's sync, then state >= k.  A skipped sync (mutation) still moves on.
                level, then, skip = SYNCS[ppc]
                if skip is not None and m == skip:
                    nxt = (mem, hist, seen, live, refs, max(st, level), b, then, threads)
                elif sync_ok(threads):
                    nxt = (mem, hist, synced(hist, len(threads)), live, refs, max(st, level), b,
                           then, threads)
            elif ppc == "tail":
                mm, hh = write(mem, hist, 1, new) if st < 2 else (mem, hist)
                nxt = (mm, hh, seen, live, refs, st, b, "sync2", threads)
            elif ppc == "first":
                mm, hh = write(mem, hist, 0, new) if st < 3 else (mem, hist)
                nxt = (mm, hh, seen, live, refs, st, b, "sync3", threads)
            elif ppc == "retire":
                nxt = (mem, hist, seen, False, refs, st, b, "wait", threads)
            elif ppc == "wait":
                if refs == 0 or m == "no_refs_wait":
                    if mem != (new, new):
                        out.append(("VIOLATION", f"batch {b + 1}: read back {mem}"))
                        return out
                    nb = b + 1
                    nxt = (mem, hist, seen, live, refs, st, nb,
                           "publish" if nb < batches else "done", threads)
            if nxt is not None:
                out.append((f"patcher {ppc} (batch {b + 1})", nxt))

        # ---- the executors (and their trap handlers) ------------------------------------
        for t, (pc, f0, f1, hb, sts, ex) in enumerate(threads):
            def put(newt, mem=mem, hist=hist, seen=seen, live=live, refs=refs, st=st):
                th = list(threads)
                th[t] = newt
                return (mem, hist, seen, live, refs, st, b, ppc, tuple(th))

            if pc == "done":
                continue
            if pc in ("fetch0", "fetch1"):
                p = 0 if pc == "fetch0" else 1
                for idx in range(seen[t][p], len(hist[p])):
                    sn = list(seen)
                    row = list(sn[t])
                    row[p] = idx
                    sn[t] = tuple(row)
                    v = hist[p][idx]
                    if p == 0:
                        nt = ("fetch1", v, None, hb, sts, ex)
                    else:
                        nt = ("exec", f0, v, hb, sts, ex)
                    out.append((f"T{t} fetches byte {p} = {v}", put(nt, seen=tuple(sn))))
            elif pc == "exec":
                if f0 == I:
                    out.append((f"T{t} traps", put(("h_load", None, None, None, None, ex))))
                elif f0 != f1:
                    out.append(("VIOLATION", f"T{t} executes a torn site: first byte {f0}, "
                                             f"tail {f1}"))
                else:
                    ex2 = ex + 1
                    nt = ("fetch0" if ex2 < executions else "done", None, None, None, None, ex2)
                    out.append((f"T{t} executes version {f0}", put(nt)))
            # the handler: take a reference, check, complete the site, drop, rewind
            elif pc == "h_load":
                if not live:
                    out.append((f"T{t} handler: no live batch, rewinds",
                                put(("fetch0", None, None, None, None, ex))))
                else:
                    out.append((f"T{t} handler: batch live", put(("h_ref", None, None, None,
                                                                   None, ex))))
            elif pc == "h_ref":
                out.append((f"T{t} handler: refs+1",
                            put(("h_check", None, None, None, None, ex), refs=refs + 1)))
            elif pc == "h_check":
                if not live:
                    out.append((f"T{t} handler: unpublished meanwhile",
                                put(("h_drop", None, None, None, None, ex))))
                elif mem[0] != I and m != "helper_ignores_byte":
                    # The int3 it trapped on was an earlier batch's: this batch has not written
                    # its own yet (or has finished the site).  Nothing to complete.
                    out.append((f"T{t} handler: site holds {mem[0]}, not int3",
                                put(("h_drop", None, None, None, None, ex))))
                else:
                    # Reads the entry now: the batch the struct holds, and its state.
                    out.append((f"T{t} handler: reads state {st} of batch {b + 1}",
                                put(("h_s1", None, None, b, st, ex))))
            elif pc in HANDLER_SYNCS:
                # The handler's step-k sync (skipped when the state it read says the step was
                # done, or by the mutation), then state >= k.
                level, raise_pc = HANDLER_SYNCS[pc]
                if sts >= level or (m == "helper_no_sync" and level < 3):
                    out.append((f"T{t} handler: no sync #{level}",
                                put((raise_pc, None, None, hb, sts, ex))))
                elif sync_ok(threads):
                    out.append((f"T{t} handler: sync #{level}", put(
                        (raise_pc, None, None, hb, sts, ex), seen=synced(hist, len(threads)))))
            elif pc in HANDLER_RAISES:
                level, then = HANDLER_RAISES[pc]
                out.append((f"T{t} handler: state>={level}",
                            put((then, None, None, hb, sts, ex),
                                st=max(st, level) if hb == b else st)))
            elif pc == "h_tail":
                if sts < 2:
                    mm, hh = write(mem, hist, 1, new_of(hb))
                    out.append((f"T{t} handler: writes tail {new_of(hb)}",
                                put(("h_s2", None, None, hb, sts, ex), mem=mm, hist=hh)))
                else:
                    out.append((f"T{t} handler: tail done", put(("h_first", None, None, hb, sts,
                                                                  ex))))
            elif pc == "h_first":
                if sts < 3:
                    mm, hh = write(mem, hist, 0, new_of(hb))
                    out.append((f"T{t} handler: writes first byte {new_of(hb)}",
                                put(("h_s3", None, None, hb, sts, ex), mem=mm, hist=hh)))
                else:
                    out.append((f"T{t} handler: done", put(("h_drop", None, None, hb, sts, ex))))
            elif pc == "h_drop":
                out.append((f"T{t} handler: refs-1, rewinds",
                            put(("fetch0", None, None, None, None, ex), refs=refs - 1)))
        return out

    # The search and the traces: pvpatch.explore, shared with the lock model.
    def finished(s):
        return s[7] == "done" and all(t[0] == "done" for t in s[8])

    r = explore(start, successors, final=finished, max_states=max_states)
    return Result(r.states, r.violations)


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
    ap.add_argument("--executors", type=int, default=2)
    ap.add_argument("--batches", type=int, default=2)
    ap.add_argument("--executions", type=int, default=2)
    ap.add_argument("--mutation", choices=MUTATIONS)
    ap.add_argument("--json", action="store_true", help="the result as JSON on stdout")
    a = ap.parse_args(rest)
    r = check(a.executors, a.batches, a.executions, a.mutation)
    if a.json:
        print(json.dumps({"protocol": "batch", "states": r.states, "ok": r.ok,
                          "mutation": a.mutation,
                          "violations": [{"what": w, "trace": t} for w, t in r.violations]},
                         indent=1))
        return 0 if r.ok else 1
    print(f"{r.states} states explored")
    for what, steps in r.violations:
        print(f"VIOLATION: {what}")
        for i, step in enumerate(steps, 1):
            print(f"  {i:3d}. {step}")
    if r.ok:
        print("no torn execution, read-backs correct, never stuck")
    return 0 if r.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
