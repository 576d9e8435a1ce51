"""An exhaustive model of the lock-switching protocol (docs/locks.md, "Switching").

Threads acquire and release a lock (optionally a second one inside a signal handler) while a
switcher runs the sequence of `pvlock_transition` (src/pvpatch/_core/locks.c, which
pvpatch/locks.py's `transition` calls) through pvpatch/patcher.py
(`_plain`: skip, validate, batch, commit):

    native -> pv    1. apply("hybrid")   2. mode = PV   3. apply("pv")
    pv -> native    1. apply("hybrid")   2. mode = HYBRID   3. grace period
                    4. apply("native"); mode = NATIVE

What is modelled, step by step as in src/pvpatch/_core/locks.c:

- the lock word (locked byte 0 / LOCKED / SLOW, the pending bit, the tail), each thread's MCS
  nodes (wait word WAITING / GRANTED / SLEEPING, next), its `pv_active` count, its `where`
  (only "head-sleep" matters: the grace period kicks those) and `waiting_on`;
- both lock functions: native (fast path: read pending, read the tail, CAS the locked byte;
  pending bit, pending owner's CAS, queue, spinning head's CAS) and pv (fast path: read
  pending, CAS the locked byte; steal, queue, sleepy node waiter, sleepy head: own pending,
  spin, give pending back, register, read mode, CAS LOCKED -> SLOW, FUTEX_WAIT on the lock word,
  deregister), upgrade to sleepy when the mode is PV, demote when it is not;
- both unlocks: the inline `movb $0` store (one instruction: fetched and executed in one step,
  as a sync cannot split it) and `pvp_kick_unlock` (xchg, then FUTEX_WAKE if it saw SLOW), and
  R3's hand-off (xchg of the successor's wait word, FUTEX_WAKE if it was SLEEPING);
- futexes with their real semantics: FUTEX_WAIT compares the word and sleeps atomically (the
  bucket lock), FUTEX_WAKE wakes one sleeper of that word, if any; a signal delivered to a
  sleeper ends its FUTEX_WAIT (EINTR) after the handler ran; no spurious wake-up otherwise,
  and no rescue timeout (a sleeper nobody wakes sleeps for ever, which is what is checked);
- the sites as the batch protocol leaves them: from the start of a batch to its final sync a
  thread that passes a site may run the old or the new rendering, afterwards only the new one;
  a thread that called the old lock function before keeps running it;
- the record of the current variant (registry.groups["lock"].current), which `runtime_patch`
  and `apply` read, and a KeyboardInterrupt at any Python step of a switch, the one between
  the batch and the commit included (bounded by `aborts`); the worker then retries the switch.

Spin loops are waits: a spinner takes its next step only when what it waits for holds (or, for
the bounded loops -- steal tries, pv_spin, the pending hand-over wait -- may give up at any
time).  So a run in which nobody can move while someone still has work is a stuck state.

Properties, in every reachable state: mutual exclusion (at most one holder per lock); no lost
wake-up (no thread sleeps on a lock word whose locked byte is no longer SLOW, or on a node that
is granted, with no FUTEX_WAKE on its way); nothing stuck; the switch completes (no batch is
refused); and, with ``liveness``, from every state the end (every thread done, every switch
made) stays reachable.  Mutations each drop one piece of the protocol; the model finds the
failure each piece prevents and prints the trace.
"""
from __future__ import annotations

from .explore import Result, explore

NATIVE, HYBRID, PV = 0, 1, 2
MODE_NAMES = ("NATIVE", "HYBRID", "PV")
VARIANTS = ("native", "hybrid", "pv")
LOCK_FN = {"native": "n", "hybrid": "n", "pv": "p"}        # pvp_native_lock / pvp_pv_lock
UNLOCK = {"native": "inline", "hybrid": "kick", "pv": "kick"}
FN_NAME = {"n": "pvp_native_lock", "p": "pvp_pv_lock"}
FREE, LOCKED, SLOW = 0, 1, 3
WAITING, GRANTED, SLEEPING = "WAITING", "GRANTED", "SLEEPING"

MUTATIONS = {
    "skip_hybrid": "native <-> pv in one step: mode word, then one batch to the target, "
                   "no hybrid, no grace period",
    "plain_store_handover": "the native head and the pending owner take the lock with a plain "
                            "store (Linux's set_locked), not a CAS",
    "no_dekker_head": "the head reads the mode before it registers in pv_active",
    "no_dekker_grace": "the grace period reads pv_active before it stores mode = HYBRID",
    "mode_pv_early": "mode = PV before the unlock sites are rendered as calls (before step 1)",
    "skip_grace": "pv -> native without the grace period",
    "sleep_without_slow": "the head sleeps on the lock word without marking it SLOW",
    "commit_before_batch": "the record is committed before the batch, and the transition "
                           "trusts it (no re-derivation from the bytes)",
    "fast_path_store": "the fast path takes the locked byte with a plain store after reading "
                       "pending and the tail clear (no CAS)",
    "trust_record": "the commit as on main before the fix: after the batch with Python code "
                    "in between, and the transition trusts the record",
}

# Frame: (pc, lock, fn, val, own, sleepy, idx, ref, saved)
PC, LK, FN, VAL, OWN, SLEEPY, IDX, REF, SAVED = range(9)
# Thread: (frames, pv_active, head_sleep, waiting_on, asleep, nodes, depth, pos, sig)
FR, PVA, HS, WO, ASLEEP, NODES, DEPTH, POS, SIG = range(9)
# Switcher: (k, pc, aborts_left, aux, refused: why the first refused switch never completes)
# State: (sw, mode, site, rec, locks, threads)
SW, MODE, SITE, REC, LOCKS, THREADS = range(6)
# The program counters at which a frame holds its lock (from its R1 operation to its unlock).
HOLDING = frozenset(("CS", "U_xchg", "Q_release", "A_out", "H_link", "H_xchg", "H_wake"))


def word(w) -> str:
    locked, pending, tail = w
    t = "-" if tail is None else f"T{tail[0]}.{tail[1]}"
    return f"{{{('0', 'LOCKED', '?', 'SLOW')[locked]}, pending {pending}, tail {t}}}"


def _transition_program(start: str, target: str, m: str | None) -> list:
    """The switcher's steps for one runtime_patch({"lock": target}), as locks.transition and
    patcher._plain run them.  ("apply", v) expands into skip / validate / batch / sync /
    commit."""
    resync = m not in ("commit_before_batch", "trust_record")
    prog = [("staged",)]
    if resync:
        prog.append(("resync",))
    if target == "pv":
        if m == "skip_hybrid":
            return prog + [("mode", PV), ("apply", "pv")]
        if m == "mode_pv_early":
            return prog + [("mode", PV), ("apply", "hybrid"), ("apply", "pv")]
        return prog + [("apply", "hybrid"), ("mode", PV), ("apply", "pv")]
    if m == "skip_hybrid":
        return prog + [("mode", NATIVE), ("apply", "native")]
    steps = [("apply", "hybrid")]
    if m == "no_dekker_grace":
        steps += [("grace",), ("mode", HYBRID)]
    elif m == "skip_grace":
        steps += [("mode", HYBRID)]
    else:
        steps += [("mode", HYBRID), ("grace",)]
    steps += [("apply", "native"), ("mode", NATIVE)]
    return prog + steps


class LockModel:
    def __init__(self, threads: int = 2, iterations: int = 1, start: str = "native",
                 switches: int = 2, signal: bool = False, aborts: int = 1,
                 mutation: str | None = None, symmetry: bool = True,
                 atomic_scan: bool | None = None):
        if mutation is not None and mutation not in MUTATIONS:
            raise ValueError(f"unknown mutation {mutation!r}; known: {', '.join(MUTATIONS)}")
        if start not in ("native", "pv"):
            raise ValueError(f"start must be native or pv, not {start!r}")
        if not 1 <= threads <= 4:
            raise ValueError(f"threads {threads}: must be 1..4")
        if iterations < 1 or switches < 0 or aborts < 0:
            raise ValueError(f"iterations {iterations}, switches {switches}, aborts {aborts}: "
                             f"need iterations >= 1, switches >= 0, aborts >= 0")
        if signal and threads < 2:
            raise ValueError("signal: needs 2 threads or more (thread 1 shares the 2nd lock)")
        self.n = threads
        self.m = mutation
        # The grace period reads the pv_active counters one by one, in any order (the code:
        # in id order), or, to keep 3 threads small, all in one step.  The Dekker pair makes
        # the difference immaterial: a thread that registers after the mode store reads the
        # new mode and never sleeps, so reading its counter earlier or later changes nothing.
        self.atomic_scan = threads >= 3 if atomic_scan is None else atomic_scan
        self.signal = signal
        # Programs: the locks each thread takes in turn.  With a signal handler, thread 0's
        # handler takes lock 1, which thread 1 takes too, so the handler's slow path nests in
        # whatever thread 0 is doing on lock 0 (a second MCS node, pv_active counting to 2).
        self.progs = [tuple([0] * iterations) for _ in range(threads)]
        if signal:
            self.progs[1] = self.progs[1] + (1,)
        self.nlocks = 2 if signal else 1
        self.symmetric = symmetry and not signal and threads > 1
        targets = []
        cur = start
        for _ in range(switches):
            cur = "pv" if cur == "native" else "native"
            targets.append(cur)
        self.targets = targets
        self.programs = []
        prev = start
        for t in targets:
            self.programs.append(_transition_program(prev, t, mutation))
            prev = t
        mode0 = PV if start == "pv" else NATIVE
        th0 = tuple(((), 0, False, None, None, ((WAITING, None),) * 2, 0, 0, 0)
                    for _ in range(threads))
        self.start = ((0, 0, aborts, None, None), mode0, (start, None), start,
                      ((FREE, 0, None),) * self.nlocks, th0)

    # ---- helpers ----------------------------------------------------------------------------
    @staticmethod
    def _put(s, i, v):
        lst = list(s)
        lst[i] = v
        return tuple(lst)

    def _set_thread(self, s, t, th):
        return self._put(s, THREADS, self._put(s[THREADS], t, th))

    def _set_lock(self, s, li, w):
        return self._put(s, LOCKS, self._put(s[LOCKS], li, w))

    @staticmethod
    def _set_frame(th, fr):
        return LockModel._put(th, FR, th[FR][:-1] + (fr,))

    @staticmethod
    def _set_node(th, idx, node):
        return LockModel._put(th, NODES, LockModel._put(th[NODES], idx, node))

    @staticmethod
    def _wake(s, addr):
        """FUTEX_WAKE(addr, 1): every choice of the one sleeper woken (or none asleep)."""
        sleepers = [t for t, th in enumerate(s[THREADS]) if th[ASLEEP] == addr]
        if not sleepers:
            return [(None, s)]
        out = []
        for t in sleepers:
            th = LockModel._put(s[THREADS][t], ASLEEP, None)
            out.append((t, LockModel._put(s, THREADS, LockModel._put(s[THREADS], t, th))))
        return out

    def _lock_fns(self, site):
        cur, new = site
        fns = {LOCK_FN[cur]}
        if new is not None:
            fns.add(LOCK_FN[new])
        return sorted(fns)

    def _unlocks(self, site):
        cur, new = site
        kinds = {UNLOCK[cur]}
        if new is not None:
            kinds.add(UNLOCK[new])
        return sorted(kinds)

    # ---- successors -------------------------------------------------------------------------
    def successors(self, s):
        out = []
        self._switcher(s, out)
        for t in range(self.n):
            self._thread(s, t, out)
        return out

    def final(self, s):
        if s[SW][4] is not None:
            return s[SW][4]
        return (s[SW][0] >= len(self.programs)
                and all(not th[FR] and th[POS] >= len(self.progs[t]) and th[ASLEEP] is None
                        and th[SIG] != 1
                        for t, th in enumerate(s[THREADS])))

    def _switcher(self, s, out):
        k, pc, aborts, aux, refused = s[SW]
        if k >= len(self.programs):
            return
        prog = self.programs[k]
        target = self.targets[k]
        step = prog[pc]
        mode, site, rec = s[MODE], s[SITE], s[REC]
        name = f"switcher (-> {target})"

        def go(label, npc=None, naux=None, **kw):
            ns = s
            for key, v in kw.items():
                ns = self._put(ns, {"mode": MODE, "site": SITE, "rec": REC}[key], v)
            npc = pc + 1 if npc is None else npc
            if npc >= len(prog):
                ns = self._put(ns, SW, (k + 1, 0, aborts, None, refused))
            else:
                ns = self._put(ns, SW, (k, npc, aborts, naux, refused))
            out.append((f"{name}: {label}", ns))

        # A KeyboardInterrupt (or a Python signal handler that raises) between two Python
        # steps of the switch: runtime_patch raises, and the worker retries the switch.
        # Not inside a batch (apply_batch runs in C, with the GIL released).
        if aborts > 0 and pc > 0 and aux != "sync":
            if step[0] == "grace":
                why = "the grace period times out (LockSwitchIncomplete, group stays hybrid)"
            else:
                why = "KeyboardInterrupt, runtime_patch raises"
            out.append((f"{name}: {why}; the worker retries",
                        self._put(s, SW, (k, 0, aborts - 1, None, refused))))
        if step[0] == "staged":
            # runtime_patch: a group whose record already names the target is not staged.
            if rec == target:
                ns = self._put(s, SW, (k + 1, 0, aborts, None, refused))
                out.append((f"{name}: runtime_patch: record says {rec!r} already, nothing "
                            f"staged", ns))
            else:
                go(f"runtime_patch stages lock: {rec} -> {target}")
        elif step[0] == "resync":
            actual = site[0]
            if actual != rec:
                go(f"transition: the sites hold {actual!r}, the record said {rec!r}: record "
                   f"re-derived from the bytes", rec=actual)
            else:
                go(f"transition: the sites hold {actual!r}, as recorded")
        elif step[0] == "mode":
            go(f"mode = {MODE_NAMES[step[1]]}", mode=step[1])
        elif step[0] == "apply":
            self._apply(s, step[1], pc, aux, go, out, name)
        elif step[0] == "grace":
            self._grace(s, pc, aux, go, out, name)

    def _apply(self, s, v, pc, aux, go, out, name):
        """patcher._plain: skip when the record names v, validate the bytes against the
        record, batch (old or new at the sites until the final sync), commit."""
        rec, site = s[REC], s[SITE]
        commit_first = self.m == "commit_before_batch"
        if aux is None:
            if rec == v:
                go(f'apply("{v}"): record says {v!r}, no batch')
                return
            if site[0] != rec and (LOCK_FN[site[0]], UNLOCK[site[0]]) != (LOCK_FN[rec],
                                                                          UNLOCK[rec]):
                # BatchRefused: nothing written, runtime_patch raises; the worker goes on with
                # the next switch.  The refused one never completes (reported at the end).
                k, _, aborts, _, refused = s[SW]
                why = refused or (f"the switch to {self.targets[k]} never completes: "
                                  f"apply(\"{v}\") is refused, the sites hold {site[0]!r} but "
                                  f"the record says {rec!r}")
                out.append((f'{name}: apply("{v}"): BatchRefused (the sites hold {site[0]!r}, '
                            f'the record says {rec!r}); runtime_patch raises',
                            self._put(s, SW, (k + 1, 0, aborts, None, why))))
                return
            if commit_first:
                go(f'apply("{v}"): commits the record = {v!r} (before the batch)', npc=pc,
                   naux="batch", rec=v)
            else:
                go(f'apply("{v}"): batch starts (int3 ... ; sites may run '
                   f'{site[0]} or {v})', npc=pc, naux="sync", site=(site[0], v))
        elif aux == "batch":
            go(f'apply("{v}"): batch starts (sites may run {site[0]} or {v})', npc=pc,
               naux="sync", site=(site[0], v))
        elif aux == "sync":
            if commit_first:
                go(f'apply("{v}"): final sync (membarrier SYNC_CORE): every site is {v}',
                   site=(v, None))
            else:
                go(f'apply("{v}"): final sync (membarrier SYNC_CORE): every site is {v}',
                   npc=pc, naux="commit", site=(v, None))
        elif aux == "commit":
            go(f'apply("{v}"): commits the record = {v!r}', rec=v)

    def _grace(self, s, pc, aux, go, out, name):
        """pvp_lock_grace: read every pv_active (in any order) until all are 0 in one scan;
        between scans wake every registered head that sleeps (grace_kick), in any order."""
        ths = s[THREADS]
        if aux is None:
            aux = ("scan", 0)
        phase = aux[0]
        if phase == "scan" and self.atomic_scan:
            busy = [t for t in range(self.n) if ths[t][PVA]]
            if not busy:
                go("grace period: reads every pv_active: all 0, done")
            else:
                go(f"grace period: reads T{busy[0]}'s pv_active = {ths[busy[0]][PVA]}: "
                   f"grace_kick", npc=pc, naux=("kick", 0, None))
        elif phase == "scan":
            seen = aux[1]
            if seen == (1 << self.n) - 1:
                go("grace period: every pv_active read 0, done")
                return
            for t in range(self.n):
                if seen & (1 << t):
                    continue
                if ths[t][PVA] == 0:
                    go(f"grace period: reads T{t}'s pv_active = 0", npc=pc,
                       naux=("scan", seen | (1 << t)))
                else:
                    go(f"grace period: reads T{t}'s pv_active = {ths[t][PVA]}: "
                       f"grace_kick", npc=pc, naux=("kick", 0, None))
        elif phase == "kick":
            done, sel = aux[1], aux[2]
            if sel is not None:
                for woke, ns in self._wake(s, ("L", sel)):
                    who = f"wakes T{woke}" if woke is not None else "nobody sleeps there"
                    ns = self._put(ns, SW, s[SW][:3] + (("kick", done, None), s[SW][4]))
                    out.append((f"{name}: grace_kick: FUTEX_WAKE on lock {sel}'s word ({who})",
                                ns))
                return
            if done == (1 << self.n) - 1:
                go("grace period: sleeps, then scans again", npc=pc, naux=("scan", 0))
                return
            for t in range(self.n):
                if done & (1 << t):
                    continue
                th = ths[t]
                if th[PVA] > 0 and th[HS] and th[WO] is not None:
                    go(f"grace_kick: T{t} is registered and its where is head-sleep on lock "
                       f"{th[WO]}", npc=pc, naux=("kick", done | (1 << t), th[WO]))
                else:
                    go(f"grace_kick: T{t} is not a registered head-sleeper", npc=pc,
                       naux=("kick", done | (1 << t), None))

    # ---- threads ----------------------------------------------------------------------------
    def _thread(self, s, t, out):
        th = s[THREADS][t]
        mode, site = s[MODE], s[SITE]
        T = f"T{t}"
        # A signal for thread 0 (signal config): at any moment of its outer run, once.
        if self.signal and t == 0 and th[SIG] == 0 and (th[FR] or th[POS] < len(self.progs[t])):
            nth = self._put(th, SIG, 1)
            what = ""
            if th[ASLEEP] is not None:
                nth = self._put(nth, ASLEEP, None)
                what = " (its FUTEX_WAIT returns EINTR after the handler)"
            nth = self._put(nth, FR, th[FR] + (("A_fetch", 1, None, None, 0, 0, None, None,
                                                  None),))
            out.append((f"{T}: a signal arrives; the handler locks lock 1{what}",
                        self._set_thread(s, t, nth)))
        if th[ASLEEP] is not None:
            return
        if not th[FR]:
            if th[POS] < len(self.progs[t]):
                li = self.progs[t][th[POS]]
                nth = self._put(th, FR, (("A_fetch", li, None, None, 0, 0, None, None, None),))
                out.append((f"{T}: lock {li}", self._set_thread(s, t, nth)))
            return
        fr = th[FR][-1]
        pc, li = fr[PC], fr[LK]
        w = s[LOCKS][li]
        locked, pending, tail = w
        me = (t, fr[IDX])

        def go(label, nfr=None, nth=None, nw=None, ns=None):
            base = s if ns is None else ns
            th2 = base[THREADS][t] if nth is None else nth
            if nfr is not None:
                th2 = self._set_frame(th2, nfr)
            base = self._set_thread(base, t, th2)
            if nw is not None:
                base = self._set_lock(base, li, nw)
            out.append((f"{T}: {label}", base))

        def f(**kw):
            lst = list(fr)
            for key, v in kw.items():
                lst[{"pc": PC, "fn": FN, "val": VAL, "own": OWN, "sleepy": SLEEPY, "idx": IDX,
                     "ref": REF, "saved": SAVED}[key]] = v
            return tuple(lst)

        def finish(label, nw=None, ns=None, nth=None):
            """Unlock done: the frame ends (a handler returns; the outer goes on)."""
            base = s if ns is None else ns
            th2 = base[THREADS][t] if nth is None else nth
            frames = th2[FR][:-1]
            th2 = self._put(th2, FR, frames)
            if th2[SIG] == 1:   # the handler runs above everything else: it returns
                th2 = self._put(th2, SIG, 2)
            else:
                th2 = self._put(th2, POS, th2[POS] + 1)
            base = self._set_thread(base, t, th2)
            if nw is not None:
                base = self._set_lock(base, li, nw)
            out.append((f"{T}: {label}", base))

        # -- acquire: the lock site ---------------------------------------------------------
        if pc == "A_fetch":
            for fn in self._lock_fns(site):
                go(f"lock site calls {FN_NAME[fn]}", f(pc="A_fast", fn=fn))
        elif pc in ("A_fast", "A_fast_tail", "A_fast_cas"):
            def slow(label):
                saved = (th[HS], th[WO])
                nth = self._put(th, WO, li)
                if fr[FN] == "p":
                    nfr = f(pc="P_steal", val=w, saved=saved)
                elif w == (FREE, 1, None):
                    nfr = f(pc="N_pendwait", val=w, saved=saved)
                else:
                    nfr = f(pc="N_check", val=w, saved=saved)
                go(f"{label}, word {word(w)}: slow path", nfr, nth=nth)
            # The fast path (locks.c, fast_take and pvp_pv_lock): separate byte reads of the
            # pending byte and (native) of the tail, then a CAS of the locked byte alone, which
            # leaves pending and tail as they are by then.
            if pc == "A_fast":
                if pending == 0:
                    go("fast path: reads pending 0",
                       f(pc="A_fast_tail" if fr[FN] == "n" else "A_fast_cas"))
                else:
                    slow("fast path: pending is set")
            elif pc == "A_fast_tail":
                if tail is None:
                    go("fast path: reads the tail empty", f(pc="A_fast_cas"))
                else:
                    slow("fast path: the queue is not empty")
            elif self.m == "fast_path_store":
                go(f"fast path: plain store locked = LOCKED (mutation), owns lock {li}",
                   f(pc="CS"), nw=(LOCKED, pending, tail))
            elif locked == FREE:
                go(f"fast path: CAS locked 0 -> LOCKED, owns lock {li}", f(pc="CS"),
                   nw=(LOCKED, pending, tail))
            else:
                slow("fast path CAS fails")
        # -- pv: steal -------------------------------------------------------------------
        elif pc == "P_steal":
            if locked == FREE and pending == 0:
                go(f"steal: sees the lock free, no pending", f(pc="P_stealcas"))
            go("steal: gives up (16 tries), queues", f(pc="Q_enter"))
        elif pc == "P_stealcas":
            if locked == FREE:
                go(f"steal: CAS locked 0 -> LOCKED, owns lock {li}", f(pc="A_out"),
                   nw=(LOCKED, pending, tail))
            else:
                go("steal: CAS fails", f(pc="P_steal"))
        # -- native: the pending bit -----------------------------------------------------
        elif pc == "N_pendwait":
            go(f"waits for the pending hand-over: word {word(w)}", f(pc="N_check", val=w))
        elif pc == "N_check":
            v = fr[VAL]
            if v[1] == 0 and v[2] is None:
                go("nobody queued, no pending: sets pending", f(pc="N_setpend"))
            else:
                go("pending or queue seen: queues", f(pc="Q_enter"))
        elif pc == "N_setpend":
            nw = (locked, 1, tail)
            if pending == 0 and tail is None:
                go(f"sets pending (fetch_or), owns pending", f(pc="N_p2l"), nw=nw,
                   nth=self._put(th, HS, False))
            elif pending == 0:
                go(f"sets pending, but the queue is not empty: clears its pending bit",
                   f(pc="N_clrpend"), nw=nw)
            else:
                go(f"pending was taken: queues", f(pc="Q_enter"))
        elif pc == "N_clrpend":
            go("clears pending", f(pc="Q_enter"), nw=(locked, 0, tail))
        elif pc == "N_p2l":
            if self.m == "plain_store_handover":
                if locked == FREE:
                    go("pending owner sees the locked byte 0", f(pc="N_p2l_store"))
            elif locked == FREE:
                go(f"pending owner: CAS (pending, 0) -> (0, LOCKED), owns lock {li}",
                   f(pc="A_out"), nw=(LOCKED, 0, tail))
        elif pc == "N_p2l_store":
            go(f"pending owner: plain store (0, LOCKED) (mutation), owns lock {li}",
               f(pc="A_out"), nw=(LOCKED, 0, tail))
        # -- the MCS queue ---------------------------------------------------------------
        elif pc == "Q_enter":
            idx = th[DEPTH]
            nth = self._put(th, DEPTH, idx + 1)
            nth = self._set_node(nth, idx, (WAITING, None))
            sl = 1 if mode == PV else 0
            go(f"takes MCS node {idx}; sleepy = (mode == PV) = {bool(sl)}",
               f(pc="Q_try", idx=idx, sleepy=sl), nth=nth)
        elif pc == "Q_try":
            if fr[FN] == "p":
                if locked == FREE and pending == 0:
                    go("last try: sees the lock free", f(pc="Q_trycas"))
                go("last try: lock busy, publishes its node", f(pc="Q_xchg"))
            elif w == (FREE, 0, None):
                go(f"last try: CAS word 0 -> LOCKED, owns lock {li}", f(pc="Q_release"),
                   nw=(LOCKED, 0, None))
            else:
                go("last try: lock busy, publishes its node", f(pc="Q_xchg"))
        elif pc == "Q_trycas":
            if locked == FREE:
                go(f"last try: steal CAS, owns lock {li}", f(pc="Q_release"),
                   nw=(LOCKED, pending, tail))
            else:
                go("last try: steal CAS fails, publishes its node", f(pc="Q_xchg"))
        elif pc == "Q_xchg":
            nw = (locked, pending, me)
            nth = self._put(th, HS, False)
            if tail is not None:
                go(f"queues: xchg tail (previous tail T{tail[0]}.{tail[1]})",
                   f(pc="Q_link", ref=tail), nw=nw, nth=nth)
            else:
                go("queues: xchg tail (queue was empty): is the head", f(pc="H_top"), nw=nw,
                   nth=nth)
        elif pc == "Q_link":
            pt, pi = fr[REF]
            pth = s[THREADS][pt]
            pth = self._set_node(pth, pi, (pth[NODES][pi][0], me))
            ns = self._set_thread(s, pt, pth)
            go(f"links into T{pt}.{pi}'s node", f(pc="W_top", ref=None), ns=ns)
        # -- wait_node ---------------------------------------------------------------------
        elif pc in ("W_top", "W_mode", "W_cas", "W_sleep", "W_woke"):
            self._wait_node(s, t, th, fr, mode, go, f)
        # -- head_lock ---------------------------------------------------------------------
        elif pc.startswith("H_"):
            self._head(s, t, th, fr, mode, w, me, go, f)
        elif pc == "Q_release" or pc == "A_out":
            nth = th
            if pc == "Q_release":
                nth = self._put(nth, DEPTH, fr[IDX])
            if fr[SAVED] is not None:
                nth = self._put(self._put(nth, HS, fr[SAVED][0]), WO, fr[SAVED][1])
            go(f"leaves the slow path holding lock {li}", f(pc="CS", saved=None, idx=None),
               nth=nth)
        # -- the critical section and the unlock site ------------------------------------
        elif pc == "CS":
            for kind in self._unlocks(site):
                if kind == "inline":
                    lost = " (SLOW cleared, nobody woken)" if locked == SLOW else ""
                    finish(f"unlock site: inline movb $0 (native), releases lock {li}{lost}",
                           nw=(FREE, pending, tail))
                else:
                    go("unlock site calls pvp_kick_unlock", f(pc="U_xchg"))
        elif pc == "U_xchg":
            nw = (FREE, pending, tail)
            if locked == SLOW:
                go(f"pvp_kick_unlock: xchg(locked, 0) saw SLOW, releases lock {li}",
                   f(pc="U_wake"), nw=nw)
            else:
                finish(f"pvp_kick_unlock: xchg(locked, 0), releases lock {li}", nw=nw)
        elif pc == "U_wake":
            for woke, ns in self._wake(s, ("L", li)):
                who = f"wakes T{woke}" if woke is not None else "nobody sleeps there"
                finish(f"pvp_kick_unlock: FUTEX_WAKE on lock {li}'s word ({who})", ns=ns)
        else:  # pragma: no cover
            raise AssertionError(pc)

    def _wait_node(self, s, t, th, fr, mode, go, f):
        pc = fr[PC]
        idx = fr[IDX]
        nw_, nx = th[NODES][idx]
        if pc == "W_top":
            if nw_ == GRANTED:
                go("its node is GRANTED: is the head", f(pc="H_top"))
                return
            if not fr[SLEEPY]:
                if mode == PV:
                    go("spinning on its node, reads mode PV: sleepy", f(sleepy=1))
            else:
                go("spun pv_spin on its node", f(pc="W_mode"))
        elif pc == "W_mode":
            if mode != PV:
                go(f"reads mode {MODE_NAMES[mode]}: demoted, spins", f(pc="W_top", sleepy=0))
            else:
                go("reads mode PV", f(pc="W_cas"))
        elif pc == "W_cas":
            if nw_ == WAITING:
                nth = self._set_node(th, idx, (SLEEPING, nx))
                go("CAS node WAITING -> SLEEPING", f(pc="W_sleep"), nth=nth)
            elif nw_ == GRANTED:
                go("CAS node WAITING -> SLEEPING fails: GRANTED, is the head", f(pc="H_top"))
            else:
                go("node is SLEEPING already: sleeps on", f(pc="W_sleep"))
        elif pc == "W_sleep":
            if nw_ == SLEEPING:
                nth = self._put(th, ASLEEP, ("N", t, idx))
                go("FUTEX_WAIT on its node (SLEEPING): asleep", f(pc="W_woke"), nth=nth)
            else:
                go("its node is GRANTED", f(pc="W_top"))
        elif pc == "W_woke":
            if mode != PV:
                go(f"awake on its node, reads mode {MODE_NAMES[mode]}: demoted, spins",
                   f(pc="W_top", sleepy=0))
            else:
                go("awake on its node, reads mode PV", f(pc="W_sleep"))

    def _head(self, s, t, th, fr, mode, w, me, go, f):
        pc, li = fr[PC], fr[LK]
        locked, pending, tail = w
        m = self.m

        def take():
            """head_take: the queue empties in the same CAS when we are its only node."""
            if tail == me:
                return (LOCKED, 0, None), 1
            return (LOCKED, 0, tail), 0

        if pc == "H_top":
            if not fr[SLEEPY]:
                if locked == FREE and pending == 0:
                    if m == "plain_store_handover":
                        go("head sees neither locked nor pending", f(pc="H_store"))
                    else:
                        nw, r = take()
                        go(f"head: CAS takes lock {li}" + (" and empties the queue" if r
                                                           else ""),
                           f(pc="Q_release" if r else "H_link"), nw=nw)
                if mode == PV:
                    go("head spinning, reads mode PV: sleepy", f(sleepy=1))
            else:
                nw = (locked, 1, tail)
                own = 1 if pending == 0 else 0
                go("sleepy head: try_own_pending " + ("(owns it)" if own else "(taken)"),
                   f(pc="H_spin", own=own), nw=nw if own else None)
        elif pc == "H_store":
            nw, r = take()
            go(f"head: plain store locked = LOCKED (mutation), owns lock {li}",
               f(pc="Q_release" if r else "H_link"), nw=nw)
        elif pc == "H_spin":
            own = fr[OWN]
            if locked == FREE and (own or pending == 0):
                nw, r = take()
                go(f"sleepy head: CAS takes lock {li}", f(pc="Q_release" if r else "H_link",
                                                          own=0), nw=nw)
            if not own and pending == 0:
                go("sleepy head: owns pending", f(own=1), nw=(locked, 1, tail))
            go("sleepy head: spun pv_spin", f(pc="H_give"))
        elif pc == "H_give":
            if fr[OWN]:
                go("gives pending back", f(pc="H_reg", own=0), nw=(locked, 0, tail))
            else:
                go("(no pending to give back)", f(pc="H_reg"))
        elif pc == "H_reg":
            if m == "no_dekker_head":
                if mode != PV:
                    go(f"reads mode {MODE_NAMES[mode]} (before registering: mutation): "
                       f"demoted", f(pc="H_top", sleepy=0))
                else:
                    go("reads mode PV (before registering: mutation)", f(pc="H_reg2"))
            else:
                go("registers: pv_active += 1", f(pc="H_mode"),
                   nth=self._put(th, PVA, th[PVA] + 1))
        elif pc == "H_reg2":
            go("registers: pv_active += 1", f(pc="H_slow"), nth=self._put(th, PVA, th[PVA] + 1))
        elif pc == "H_mode":
            if mode != PV:
                go(f"reads mode {MODE_NAMES[mode]}: deregisters, demoted",
                   f(pc="H_top", sleepy=0), nth=self._put(th, PVA, th[PVA] - 1))
            else:
                go("reads mode PV", f(pc="H_slow"))
        elif pc == "H_slow":
            if m == "sleep_without_slow":
                if locked != FREE:
                    go("(does not mark SLOW: mutation)", f(pc="H_load"))
                else:
                    go("lock is free: deregisters, goes round", f(pc="H_dereg"))
            elif locked == LOCKED:
                go("CAS locked LOCKED -> SLOW", f(pc="H_load"), nw=(SLOW, pending, tail))
            elif locked == SLOW:
                go("locked is SLOW already", f(pc="H_load"))
            else:
                go("CAS LOCKED -> SLOW fails: lock free, goes round", f(pc="H_dereg"))
        elif pc == "H_load":
            ok = locked != FREE if m == "sleep_without_slow" else locked == SLOW
            if ok:
                go(f"reads word {word(w)}: where = head-sleep", f(pc="H_futex", val=w),
                   nth=self._put(th, HS, True))
            else:
                go(f"reads word {word(w)}: not SLOW, goes round", f(pc="H_dereg"))
        elif pc == "H_futex":
            if w == fr[VAL]:
                go(f"FUTEX_WAIT on lock {li}'s word {word(w)}: asleep", f(pc="H_dereg", val=None),
                   nth=self._put(th, ASLEEP, ("L", li)))
            else:
                go(f"FUTEX_WAIT on lock {li}'s word: value changed ({word(w)}), returns",
                   f(pc="H_dereg", val=None))
        elif pc == "H_dereg":
            nth = self._put(self._put(th, HS, False), PVA, th[PVA] - 1)
            if mode != PV:
                go(f"deregisters (pv_active -= 1), reads mode {MODE_NAMES[mode]}: demoted",
                   f(pc="H_top", sleepy=0), nth=nth)
            else:
                go("deregisters (pv_active -= 1), goes round", f(pc="H_top"), nth=nth)
        elif pc == "H_link":
            nx = th[NODES][fr[IDX]][1]
            if nx is not None:
                go(f"holds lock {li}, successor T{nx[0]}.{nx[1]} linked", f(pc="H_xchg",
                                                                            ref=nx))
        elif pc == "H_xchg":
            nt, ni = fr[REF]
            nth_ = s[THREADS][nt]
            old = nth_[NODES][ni][0]
            nth_ = self._set_node(nth_, ni, (GRANTED, nth_[NODES][ni][1]))
            ns = self._set_thread(s, nt, nth_)
            if old == SLEEPING:
                go(f"hand-off: xchg(T{nt}.{ni}->wait, GRANTED) saw SLEEPING", f(pc="H_wake"),
                   ns=ns)
            else:
                go(f"hand-off: xchg(T{nt}.{ni}->wait, GRANTED)", f(pc="Q_release", ref=None),
                   ns=ns)
        elif pc == "H_wake":
            nt, ni = fr[REF]
            for woke, ns in self._wake(s, ("N", nt, ni)):
                who = f"wakes T{woke}" if woke is not None else "nobody sleeps there"
                go(f"hand-off: FUTEX_WAKE on T{nt}.{ni}'s node ({who})",
                   f(pc="Q_release", ref=None), ns=ns)
        else:  # pragma: no cover
            raise AssertionError(pc)

    # ---- properties -------------------------------------------------------------------------
    def invariant(self, s):
        ths = s[THREADS]
        for li in range(self.nlocks):
            holders = [t for t, th in enumerate(ths) for fr in th[FR]
                       if fr[LK] == li and fr[PC] in HOLDING]
            if len(holders) > 1:
                return (f"mutual exclusion broken: T{holders[0]} and T{holders[1]} both hold "
                        f"lock {li}")
        for t, th in enumerate(ths):
            a = th[ASLEEP]
            if a is None:
                continue
            if a[0] == "L":
                li = a[1]
                if s[LOCKS][li][0] != SLOW and not self._waker(s, a):
                    return (f"lost wake-up: T{t} sleeps on lock {li}'s word, which is "
                            f"{word(s[LOCKS][li])}: no unlock will kick it, no FUTEX_WAKE "
                            f"is on its way")
            else:
                _, nt, ni = a
                if ths[nt][NODES][ni][0] != SLEEPING and not self._waker(s, a):
                    return (f"lost wake-up: T{t} sleeps on its node, which is GRANTED, and no "
                            f"FUTEX_WAKE is on its way")
        return None

    def _waker(self, s, addr):
        for th in s[THREADS]:
            for fr in th[FR]:
                if addr[0] == "L" and fr[PC] == "U_wake" and fr[LK] == addr[1]:
                    return True
                if addr[0] == "N" and fr[PC] == "H_wake" and fr[REF] == addr[1:]:
                    return True
        aux = s[SW][3]
        if (addr[0] == "L" and isinstance(aux, tuple) and aux[0] == "kick"
                and aux[2] == addr[1]):
            return True
        return False

    # ---- symmetry ---------------------------------------------------------------------------
    def canon(self, s):
        if not self.symmetric:
            return s
        # Threads sorted by what they do, with every reference to a thread left out (so the
        # key does not depend on the names); ties keep their order.  Not every pair of
        # symmetric states meets the same representative, which only costs states, never a
        # behaviour: every state explored is a real one.
        keys = [repr(self._shape(th)) for th in s[THREADS]]
        order = sorted(range(self.n), key=keys.__getitem__)
        if order == list(range(self.n)):
            return s
        perm = [0] * self.n
        for new_t, old_t in enumerate(order):
            perm[old_t] = new_t
        return self._rename(s, perm)

    @staticmethod
    def _shape(th):
        def noref(r):
            return None if r is None else r[1]
        frames = tuple((fr[0], fr[1], fr[2], None if fr[VAL] is None else
                        (fr[VAL][0], fr[VAL][1], noref(fr[VAL][2])), fr[4], fr[5], fr[6],
                        noref(fr[REF]), fr[8]) for fr in th[FR])
        a = th[ASLEEP]
        return (frames, th[1], th[2], th[3], a and a[0],
                tuple((nw, noref(nx)) for nw, nx in th[NODES]), th[6], th[7], th[8])

    def _rename(self, s, perm):
        """The state with thread t renamed perm[t] (every reference to a node renamed)."""
        def ref(r):
            return None if r is None else (perm[r[0]], r[1])

        def frame(fr):
            v = fr[VAL]
            if v is not None:
                v = (v[0], v[1], ref(v[2]))
            return (fr[0], fr[1], fr[2], v, fr[4], fr[5], fr[6], ref(fr[REF]), fr[8])

        ths = [None] * self.n
        for t, th in enumerate(s[THREADS]):
            a = th[ASLEEP]
            if a is not None and a[0] == "N":
                a = ("N", perm[a[1]], a[2])
            ths[perm[t]] = (tuple(frame(fr) for fr in th[FR]), th[1], th[2], th[3], a,
                            tuple((nw, ref(nx)) for nw, nx in th[NODES]), th[6], th[7], th[8])
        locks = tuple((lk, p, ref(tl)) for lk, p, tl in s[LOCKS])
        sw = s[SW]
        aux = sw[3]
        if isinstance(aux, tuple) and aux[0] in ("scan", "kick"):
            mask = 0
            for t in range(self.n):
                if aux[1] & (1 << t):
                    mask |= 1 << perm[t]
            aux = (aux[0], mask) + aux[2:]
            sw = (sw[0], sw[1], sw[2], aux, sw[4])
        return (sw, s[1], s[2], s[3], locks, tuple(ths))


def check(threads: int = 2, iterations: int = 1, start: str = "native", switches: int = 2,
          signal: bool = False, aborts: int = 1, mutation: str | None = None,
          symmetry: bool = True, liveness: bool = True, atomic_scan: bool | None = None,
          max_states: int = 3_000_000) -> Result:
    """Explore every interleaving of the lock protocol; see the module's docstring."""
    model = LockModel(threads, iterations, start, switches, signal, aborts, mutation, symmetry,
                      atomic_scan)
    r = explore(model.start, model.successors, invariant=model.invariant, final=model.final,
                canon=model.canon if model.symmetric else None, liveness=liveness,
                max_states=max_states)
    r.mutation = mutation
    r.config = {"protocol": "lock", "threads": threads, "iterations": iterations,
                "start": start, "switches": switches, "signal": signal, "aborts": aborts,
                "symmetry": model.symmetric, "liveness": liveness,
                "atomic_scan": model.atomic_scan}
    return r


#: The configurations `python -m pvpatch.model --protocol lock` checks, and the smallest one
#: in which each mutation is caught (a pending owner, a queued head and an owner need three
#: threads; a record that lags the bytes needs a switch back).
CONFIGS = {
    "2 threads, native -> pv -> native, 1 interrupt": dict(threads=2, start="native"),
    "2 threads, pv -> native -> pv, 1 interrupt": dict(threads=2, start="pv"),
    "2 threads, 2 acquisitions each, native -> pv -> native": dict(threads=2, iterations=2,
                                                                   aborts=0),
    "2 threads + a signal handler locking a 2nd lock, native -> pv -> native":
        dict(threads=2, signal=True, aborts=0),
    "2 threads + a signal handler locking a 2nd lock, pv -> native -> pv":
        dict(threads=2, signal=True, aborts=0, start="pv"),
    "3 threads, native -> pv": dict(threads=3, switches=1, aborts=0),
    "3 threads, pv -> native": dict(threads=3, switches=1, aborts=0, start="pv"),
}
MUTATION_CONFIGS = {
    "skip_hybrid": dict(threads=2),
    "plain_store_handover": dict(threads=3, switches=1, aborts=0),
    "no_dekker_head": dict(threads=2),
    "no_dekker_grace": dict(threads=2),
    "mode_pv_early": dict(threads=3, switches=1, aborts=0),
    "skip_grace": dict(threads=2),
    "sleep_without_slow": dict(threads=2),
    "commit_before_batch": dict(threads=3, switches=1),
    "trust_record": dict(threads=2, start="pv", switches=2),
    "fast_path_store": dict(threads=2, switches=0),
}


def main(argv=None) -> int:
    import argparse
    import json
    import sys

    from .explore import report

    ap = argparse.ArgumentParser(prog="python -m pvpatch.model --protocol lock",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int)
    ap.add_argument("--iterations", type=int, default=1, help="acquisitions per thread")
    ap.add_argument("--start", choices=("native", "pv"), default="native")
    ap.add_argument("--switches", type=int, default=2)
    ap.add_argument("--signal", action="store_true",
                    help="thread 0 gets one signal whose handler locks a second lock")
    ap.add_argument("--aborts", type=int, default=1,
                    help="KeyboardInterrupts (or grace timeouts) that may end a switch early")
    ap.add_argument("--mutation", choices=sorted(MUTATIONS))
    ap.add_argument("--no-symmetry", action="store_true")
    ap.add_argument("--no-liveness", action="store_true")
    ap.add_argument("--json", action="store_true", help="results as JSON on stdout")
    a = ap.parse_args(argv)
    runs = []
    if a.threads is None and a.mutation is None:
        runs = [(name, dict(cfg)) for name, cfg in CONFIGS.items()]
    elif a.threads is None:
        runs = [(f"mutation {a.mutation}", dict(MUTATION_CONFIGS[a.mutation],
                                                mutation=a.mutation))]
    else:
        runs = [("", dict(threads=a.threads, iterations=a.iterations, start=a.start,
                          switches=a.switches, signal=a.signal, aborts=a.aborts,
                          mutation=a.mutation))]
    results = []
    for name, cfg in runs:
        cfg.setdefault("symmetry", not a.no_symmetry)
        cfg.setdefault("liveness", not a.no_liveness)
        try:
            r = check(**cfg)
        except ValueError as exc:
            ap.error(str(exc))
        results.append((name, r))
        if not a.json:
            if name:
                print(f"== {name}")
            report(r, "mutual exclusion, no lost wake-up, never stuck, every switch completes")
            sys.stdout.flush()
    ok = all(r.ok for _, r in results)
    if a.json:
        out = [dict(r.as_dict(), name=name) for name, r in results]
        print(json.dumps(out[0] if len(out) == 1 else
                         {"states": sum(r.states for _, r in results), "ok": ok,
                          "mutation": a.mutation,
                          "violations": [v for d in out for v in d["violations"]],
                          "runs": out}, indent=1))
    return 0 if ok else 1
