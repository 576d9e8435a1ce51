"""The trap path in the situations ordinary programs create (issue 8): signal handlers installed
with a full mask, threads that block every signal, a first trap inside a handler that
interrupted malloc, small alternate stacks, thread churn, failed membarriers, foreign traps.

Scenarios that could kill the process run in a child interpreter, so that a death is reported
with its signal rather than taking the test run with it.  Every wait is bounded."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

import pvpatch
from pvpatch import _core, gen, patcher

X_LOOP, X_MALLOC, X_FULLMASK, X_BLOCKALL = 1, 2, 4, 8

PRELUDE = textwrap.dedent("""
    import json, os, signal, sys
    import pvpatch
    from pvpatch import _core, gen
    X_LOOP, X_MALLOC, X_FULLMASK, X_BLOCKALL = 1, 2, 4, 8
    def patch_until(batches, handler_calls=0, passes=0, limit_s=30.0):
        # At least `batches` batches, and on until the threads did enough (bounded in time).
        import time
        t0, i = time.monotonic(), 0
        while i < batches or (time.monotonic() - t0 < limit_s and
                              (_core.trapx_progress()[1] < handler_calls or
                               _core.trapx_progress()[0] < passes)):
            pvpatch.runtime_patch({"selftest": CYCLE[i % 3]})
            i += 1
        return i
    SITES = [s for s in _core.selftest_sites()[:11]]   # the runtime sites
    CYCLE = ("pv", "alt", "native")
""")


def run_child(body: str, timeout: float = 120, prefix: str = "", writer: str = "") -> dict:
    """Run PRELUDE + prefix + body in a fresh interpreter (with PVPATCH_WRITER=writer when
    given); it prints one JSON line last."""
    env = dict(os.environ, PVPATCH_WRITER=writer) if writer else None
    proc = subprocess.run([sys.executable, "-c", PRELUDE + prefix + textwrap.dedent(body)],
                          capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        how = (f"killed by {signal.Signals(-proc.returncode).name}" if proc.returncode < 0
               else f"exit {proc.returncode}")
        pytest.fail(f"child {how}\nstdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_handler_installed_with_a_full_mask_runs_sites_under_patch():
    # Before: the handler ran with SIGTRAP blocked; dead at the second batch.
    res = run_child("""
        _core.trapx_start(SITES, 2, X_MALLOC | X_FULLMASK, 4000.0)
        patch_until(600, handler_calls=500)
        st = _core.trapx_stop(10)
        pvpatch.runtime_patch({"selftest": "native"})
        st["traps"] = _core.trap_counters()["traps"]
        print(json.dumps(st))
    """)
    assert res["hung"] == 0 and res["failures"] == 0, res
    assert res["handler_calls"] > 100 and res["traps"] > 0


def test_first_trap_in_a_handler_that_interrupted_malloc():
    # Fresh threads that only malloc/free; their first site call, and first trap, is in a
    # signal handler that interrupted malloc.  Before: the handler's first TLS access called
    # malloc and the thread deadlocked on its own arena lock (and pthread_create with it).
    res = run_child("""
        out = {"hung": 0, "failures": 0, "handler_calls": 0}
        for rnd in range(4):
            _core.trapx_start(SITES, 8, X_MALLOC, 5000.0)
            patch_until(300, handler_calls=200)
            st = _core.trapx_stop(10)
            for k in out:
                out[k] += st[k]
            if st["hung"]:
                break
        import threading
        t = threading.Thread(target=lambda: None)
        t.start(); t.join(10)
        out["created_after"] = not t.is_alive()
        pvpatch.runtime_patch({"selftest": "native"})
        print(json.dumps(out))
    """, timeout=180)
    assert res["hung"] == 0, res
    assert res["failures"] == 0 and res["handler_calls"] > 100 and res["created_after"]


@pytest.mark.parametrize("writer", ["alias", "proc-mem"])
def test_thread_blocking_all_signals_around_call_sites_survives(writer):
    # A thread that blocks every signal around the sites it runs.  Alias writer: call -> call
    # switches of sites whose rel32 lies in one aligned 8-byte word take no int3 at all, one
    # store each.  proc-mem writer (no single 8-byte store): every switch takes the int3
    # protocol, and the thread survives its traps because SIGTRAP stays unblocked (masks.c).
    res = run_child("""
        g = gen.generate(16, length=8, group="blockall")
        pvpatch.register_desc(g.desc, text=g.text)
        _core.trapx_start([(f, 0) for f in g.functions], 2, X_LOOP | X_BLOCKALL, 0.0)
        traps0 = _core.trap_counters()["traps"]
        syncs, flips = set(), 0
        for i in range(3000):
            ev = pvpatch.runtime_patch({"blockall": ("pv", "native")[i % 2]})
            syncs.add(ev.syncs)
        st = _core.trapx_stop(10)
        st["traps"] = _core.trap_counters()["traps"] - traps0
        st["syncs"] = sorted(syncs)
        st["flips"] = _core.trap_counters()["atomic_flips"]
        st["atomic_store"] = _core.writer_status()["atomic_store"]
        print(json.dumps(st))
    """, writer=writer)
    assert res["hung"] == 0 and res["failures"] == 0 and res["passes"] > 0, res
    if writer == "alias":
        assert res["atomic_store"], res
        assert res["traps"] == 0 and res["syncs"] == [1] and res["flips"] >= 3000 * 16, res
    else:
        assert not res["atomic_store"], res
        assert res["flips"] == 0 and res["syncs"] == [3] and res["traps"] > 0, res


def test_thread_blocking_all_signals_around_trapping_sites_survives():
    # The same thread on sites whose switches do trap (inline, NOP, call renderings): its
    # pthread_sigmask(SIG_SETMASK, <every signal>) reaches the C library without SIGTRAP, as
    # pvpatch owns the GOT entries of the mask functions.  Before: dead after some hundreds to
    # thousands of batches.
    res = run_child("""
        _core.trapx_start(SITES, 2, X_LOOP | X_BLOCKALL, 0.0)
        traps0 = _core.trap_counters()["traps"]
        patch_until(3000, passes=2000)
        st = _core.trapx_stop(10)
        st["traps"] = _core.trap_counters()["traps"] - traps0
        st["owned"] = _core.own_masks()
        pvpatch.runtime_patch({"selftest": "native"})
        print(json.dumps(st))
    """)
    assert res["hung"] == 0 and res["failures"] == 0 and res["passes"] >= 2000, res
    assert res["traps"] > 0 and res["owned"]["masks_stripped"] > 0


def test_masks_set_through_python_and_sigaction_keep_sigtrap_deliverable():
    import signal as sg
    old = sg.pthread_sigmask(sg.SIG_BLOCK, set(sg.Signals))
    try:
        now = sg.pthread_sigmask(sg.SIG_BLOCK, [])
        assert sg.SIGTRAP not in now and sg.SIGUSR1 in now
    finally:
        sg.pthread_sigmask(sg.SIG_SETMASK, old)


@pytest.mark.parametrize("writer", ["alias", "proc-mem"])
def test_unaligned_call_flips_still_take_the_int3_protocol(writer):
    res = run_child("""
        out = {"atomic_store": _core.writer_status()["atomic_store"]}
        g = gen.generate(4, length=6, group="unaligned6")  # rel32 at function + 6: a word apart
        pvpatch.register_desc(g.desc, text=g.text)
        ev = pvpatch.runtime_patch({"unaligned6": "pv"})
        out["unaligned"] = [ev.syncs, ev.sites, all(g.call(i) == 0x1002 for i in range(4))]
        g8 = gen.generate(4, length=8, group="aligned8")
        pvpatch.register_desc(g8.desc, text=g8.text)
        flips0 = _core.trap_counters()["atomic_flips"]
        ev = pvpatch.runtime_patch({"aligned8": "pv"})
        out["aligned"] = [ev.syncs, ev.sites, all(g8.call(i) == 0x1002 for i in range(4)),
                          _core.trap_counters()["atomic_flips"] - flips0]
        ev = pvpatch.runtime_patch({"aligned8": "alt"})  # call -> inline: int3 again
        out["inline"] = [ev.syncs, all(g8.call(i) == 0x1003 for i in range(4))]
        print(json.dumps(out))
    """, writer=writer)
    assert res["atomic_store"] == (writer == "alias"), res
    assert res["unaligned"] == [3, 4, True] and res["inline"] == [3, True], res
    # An aligned call -> call flip is one store and one sync only where the writer's 8-byte
    # write is one store; through /proc/self/mem it takes the int3 protocol.
    assert res["aligned"] == ([1, 4, True, 4] if writer == "alias" else [3, 4, True, 0]), res


def test_faulthandler_watchdog_blocks_every_signal_and_refuses_nothing():
    # faulthandler's watchdog thread blocks every signal for good and runs no site.  Before:
    # `import pvpatch` (its registration batch) and every batch were refused.
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import faulthandler, json
        faulthandler.dump_traceback_later(600)
        import pvpatch
        for i in range(201):
            pvpatch.runtime_patch({"selftest": ("pv", "alt", "native")[i % 3]})
        faulthandler.cancel_dump_traceback_later()
        print(json.dumps(pvpatch.current()))
    """)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["selftest"] == "native"


def test_thread_blocking_sigtrap_for_good_refuses_nothing(selftest_native):
    ready, stop = threading.Event(), threading.Event()

    def blocker():
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTRAP})
        ready.set()
        stop.wait(30)

    t = threading.Thread(target=blocker, name="blocks-trap")
    t.start()
    try:
        assert ready.wait(10)
        for v in ("pv", "alt", "native", "pv"):
            pvpatch.runtime_patch({"selftest": v})
        assert _core.selftest_call(0) == 0x1002
    finally:
        stop.set()
        t.join(10)


def test_alternate_stack_of_the_documented_minimum():
    # docs/protocol.md: the handler needs sysconf(_SC_MINSIGSTKSZ) + 1 KiB of alternate stack.
    # Threads run sites with such a sigaltstack while every batch traps them (inline and NOP
    # renderings, slots); the measured use is reported.
    res = run_child("""
        need = _core.minsigstksz() + 1024
        _core.trapx_start(SITES, 2, X_LOOP, 0.0, need)
        traps0 = _core.trap_counters()["traps"]
        patch_until(1500, passes=1000)
        import time
        t0 = time.monotonic()  # batches are short: go on until some trap was taken (bounded)
        while _core.trap_counters()["traps"] == traps0 and time.monotonic() - t0 < 30:
            patch_until(100)
        st = _core.trapx_stop(10)
        st["traps"] = _core.trap_counters()["traps"] - traps0
        st["size"] = need
        print(json.dumps(st))
    """)
    assert res["hung"] == 0 and res["failures"] == 0, res
    assert res["traps"] > 0 and 0 < res["altstack_used"] <= res["size"]


def test_thread_churn_during_thousands_of_batches(selftest_native):
    stop, errors, churned = threading.Event(), [], [0]

    def churn():
        while not stop.is_set():
            ts = [threading.Thread(target=lambda: None) for _ in range(8)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(10)
            churned[0] += len(ts)

    c = threading.Thread(target=churn)
    c.start()
    try:
        for i in range(3000):
            try:
                pvpatch.runtime_patch({"selftest": ("pv", "alt", "native")[i % 3]})
            except Exception as exc:  # reported below
                errors.append(repr(exc))
                break
    finally:
        stop.set()
        c.join(30)
    assert not c.is_alive()
    assert errors == [] and churned[0] > 0
    assert _core.selftest_call(0) == 0x1001


def _foreign_int3_script(with_pvpatch: bool, disposition: str) -> str:
    return textwrap.dedent(f"""
        import ctypes, mmap, signal, sys
        if {with_pvpatch!r}:
            import pvpatch
            pvpatch.runtime_patch({{"selftest": "pv"}})  # our handler is installed, chained
        signal.signal(signal.SIGTRAP, signal.{disposition})
        if {with_pvpatch!r}:
            pvpatch.runtime_patch({{"selftest": "native"}})  # chained to {disposition}
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        p = libc.mmap(None, 4096, 3, 0x22, -1, 0)               # rw-, private anonymous
        ctypes.memmove(p, bytes.fromhex("ccb82a000000c3"), 7)    # int3; mov $42,%eax; ret
        assert libc.mprotect(ctypes.c_void_p(p), 4096, 5) == 0  # r-x
        print(ctypes.CFUNCTYPE(ctypes.c_long)(p)(), flush=True)
    """)


@pytest.mark.parametrize("disposition", ["SIG_IGN", "SIG_DFL"])
def test_foreign_int3_behaves_as_without_pvpatch(disposition):
    # The kernel resets an ignored forced SIGTRAP to SIG_DFL: an int3 kills the process with
    # SIGTRAP ignored or default.  Before: with SIG_IGN chained, pvpatch's handler returned and
    # the foreign int3 fell through.
    codes = []
    for with_pvpatch in (False, True):
        proc = subprocess.run([sys.executable, "-c", _foreign_int3_script(with_pvpatch,
                                                                            disposition)],
                              capture_output=True, text=True, timeout=60)
        codes.append((proc.returncode, proc.stdout.strip()))
    assert codes[0] == codes[1] == (-signal.SIGTRAP, ""), codes


SECCOMP = textwrap.dedent("""
    import ctypes, struct
    libc = ctypes.CDLL(None, use_errno=True)
    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    # seccomp: membarrier (324 on x86-64) fails with EPERM in this thread, all else allowed
    INS = [(0x20, 0, 0, 0), (0x15, 0, 1, 324), (0x06, 0, 0, 0x00050000 | 1),
           (0x06, 0, 0, 0x7fff0000)]
    FILTER = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in INS))
    PROG = Prog(len(INS), ctypes.addressof(FILTER))
    def fail_membarrier():
        assert libc.prctl(38, 1, 0, 0, 0) == 0                       # PR_SET_NO_NEW_PRIVS
        assert libc.prctl(22, 2, ctypes.byref(PROG), 0, 0) == 0      # SECCOMP_MODE_FILTER
        return 0
    HOOK = ctypes.CFUNCTYPE(ctypes.c_long)(fail_membarrier)
    HOOK_ADDR = ctypes.cast(HOOK, ctypes.c_void_p).value
    t = pvpatch.core_module.tables["selftest"]
    def batch(frm, to, step):
        return _core.apply_batch(t.addrs.tobytes(), t.lens,
                                 t.by_variant[frm], t.by_variant[to], HOOK_ADDR, step)
    def results():
        return [_core.selftest_call(i, 1, 2) for i in range(11)]
""")


@pytest.mark.parametrize("step", [1, 2])
def test_failed_membarrier_leaves_whole_old_sites(step):
    res = run_child(prefix=SECCOMP, body=f"""
        before = results()
        try:
            batch("native", "pv", {step})
            out = {{"raised": None}}
        except OSError as exc:
            out = {{"raised": [exc.errno, exc.filename, exc.filename2]}}
        # Every site still gives its native result, with threads trapping or not.
        _core.trapx_start(SITES, 2, X_LOOP, 0.0)
        out["same"] = results() == before
        st = _core.trapx_stop(10)
        out["failures"], out["hung"] = st["failures"], st["hung"]
        heads = [_core.read(a, 1)[0] for a in t.addrs]
        out["int3s"] = sum(h == 0xcc for h in heads)
        tails_old = all(_core.read(a + 1, n - 1) == t.by_variant["native"][16*i+1:16*i+n]
                        for i, (a, n) in enumerate(zip(t.addrs, t.lens)))
        out["tails_old"] = tails_old
        # The next batch cannot restore without a sync either: it says so, changes nothing.
        try:
            _core.apply_batch(t.addrs.tobytes(), t.lens,
                              t.by_variant["native"], t.by_variant["pv"])
            out["next"] = None
        except OSError as exc:
            out["next"] = exc.filename
        out["same_after"] = results() == before
        print(json.dumps(out))
    """)
    assert res["raised"] is not None and res["raised"][0] == 1 and res["raised"][1] == "membarrier"
    assert res["same"] and res["same_after"] and res["failures"] == 0 and res["hung"] == 0
    assert res["tails_old"] and res["next"] == "membarrier"
    if step == 1:
        assert res["int3s"] == 0       # the old first bytes are back
    else:
        assert res["int3s"] > 0        # parked behind int3, emulating the old renderings


def test_parked_batch_is_restored_by_the_next_batch():
    # Sync #2 fails once (the filter is installed on a helper thread that runs the batch); the
    # next batch, from a thread without the filter, restores the old bytes and goes on.
    res = run_child(prefix=SECCOMP, body="""
        import threading
        before = results()
        err = []
        def patch_with_failing_syncs():
            try:
                batch("native", "pv", 2)
            except OSError as exc:
                err.append(exc.errno)
        th = threading.Thread(target=patch_with_failing_syncs)
        th.start(); th.join(30)
        parked = [_core.read(a, 1)[0] == 0xcc for a in t.addrs]
        mid = results() == before
        ev = pvpatch.runtime_patch({"selftest": "pv"})   # restores, then switches
        pv = results()
        pvpatch.runtime_patch({"selftest": "native"})
        print(json.dumps({"err": err, "parked": any(parked), "mid": mid, "syncs": ev.syncs,
                          "pv_ok": pv[0] == 0x1002, "back": results() == before}))
    """)
    assert res["err"] == [1] and res["parked"] and res["mid"]
    assert res["syncs"] == 4 and res["pv_ok"] and res["back"]


def _resethand_script(with_pvpatch: bool) -> str:
    return textwrap.dedent(f"""
        import ctypes, signal, sys
        if {with_pvpatch!r}:
            import pvpatch
            pvpatch.runtime_patch({{"selftest": "pv"}})
        libc = ctypes.CDLL(None, use_errno=True)
        class SigAction(ctypes.Structure):
            _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_ulong * 16),
                        ("flags", ctypes.c_int), ("restorer", ctypes.c_void_p)]
        seen = []
        H = ctypes.CFUNCTYPE(None, ctypes.c_int)(lambda s: seen.append(s))
        sa = SigAction()
        sa.handler = ctypes.cast(H, ctypes.c_void_p).value
        sa.flags = -0x80000000                                  # SA_RESETHAND
        assert libc.sigaction(signal.SIGTRAP, ctypes.byref(sa), None) == 0
        if {with_pvpatch!r}:
            pvpatch.runtime_patch({{"selftest": "native"}})      # ours again, chained to it
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        p = libc.mmap(None, 4096, 3, 0x22, -1, 0)
        ctypes.memmove(p, bytes.fromhex("ccb82a000000c3"), 7)    # int3; mov $42,%eax; ret
        assert libc.mprotect(ctypes.c_void_p(p), 4096, 5) == 0
        f = ctypes.CFUNCTYPE(ctypes.c_long)(p)
        print(f(), len(seen), flush=True)   # the handler runs once...
        print(f(), len(seen), flush=True)   # ...then the default action
    """)


def test_chained_handler_with_sa_resethand_behaves_as_without_pvpatch():
    # Before: the previous handler's SA_RESETHAND was ignored; the second int3 reached it again.
    runs = []
    for with_pvpatch in (False, True):
        proc = subprocess.run([sys.executable, "-c", _resethand_script(with_pvpatch)],
                              capture_output=True, text=True, timeout=60)
        runs.append((proc.returncode, proc.stdout.split()))
    assert runs[0] == runs[1] == (-signal.SIGTRAP, ["42", "1"]), runs


def test_sigtrap_handler_installed_later_is_chained_not_installed():
    # A program that installs its own SIGTRAP handler (here Python's signal.signal, through the
    # sigaction GOT entry pvpatch owns) after pvpatch's: pvpatch's stays, theirs gets the traps
    # that are not pvpatch's.  The batch below skips the reinstall that runtime_patch does, and
    # traps on its own int3.  Before: Python's handler took pvpatch's int3 and the thread ran on
    # from the middle of a site.
    res = run_child("""
        seen = []
        signal.signal(signal.SIGTRAP, lambda s, f: seen.append(s))
        t = pvpatch.core_module.tables["selftest"]
        r = _core.apply_batch(t.addrs.tobytes(), t.lens,
                              t.by_variant["native"], t.by_variant["alt"], _core.selftest_hook())
        ok = _core.selftest_call(0) == 0x1003   # call -> inline: the int3 protocol
        signal.raise_signal(signal.SIGTRAP)          # not pvpatch's: Python's handler
        for _ in range(100):
            if seen:
                break
        print(json.dumps({"on_patcher": r["traps_on_patcher"], "ok": ok, "seen": seen}))
    """)
    assert res == {"on_patcher": 1, "ok": True, "seen": [int(signal.SIGTRAP)]}, res


HELPER_C = r"""
#define _GNU_SOURCE
#include <signal.h>
#include <string.h>
/* A library loaded after pvpatch: its own GOT entries for pthread_sigmask and sigaction. */
int sigtrap_blocked_after_blocking_all(void)
{
    sigset_t all, old, now;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_sigmask(SIG_SETMASK, NULL, &now);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return sigismember(&now, SIGTRAP);
}
static volatile int seen, usr1_blocked_in_handler;
static void on_trap(int sig, siginfo_t *si, void *uc)
{
    sigset_t now;
    pthread_sigmask(SIG_SETMASK, NULL, &now);
    usr1_blocked_in_handler = sigismember(&now, SIGUSR1);
    seen++;
}
int install_trap_handler_masking_usr1(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_trap;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGUSR1);
    return sigaction(SIGTRAP, &sa, NULL);
}
int seen_and_usr1_blocked(void) { return seen * 10 + usr1_blocked_in_handler; }
static volatile int trap_blocked_in_usr1;
static void on_usr1(int sig)
{
    sigset_t now;
    pthread_sigmask(SIG_SETMASK, NULL, &now);
    trap_blocked_in_usr1 = sigismember(&now, SIGTRAP);
}
/* The sigsuspend idiom: wait for SIGUSR1 with every other signal blocked. */
int sigtrap_blocked_in_a_handler_during_sigsuspend(void)
{
    struct sigaction sa, old_sa;
    sigset_t usr1, old, wait_mask;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_usr1;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, &old_sa);
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &usr1, &old);
    raise(SIGUSR1);
    sigfillset(&wait_mask);
    sigdelset(&wait_mask, SIGUSR1);
    trap_blocked_in_usr1 = -1;
    sigsuspend(&wait_mask);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    sigaction(SIGUSR1, &old_sa, NULL);
    return trap_blocked_in_usr1;
}
static void on_usr2(int sig) {}
int install_usr2_with_a_full_mask(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_usr2;
    sigfillset(&sa.sa_mask);
    return sigaction(SIGUSR2, &sa, NULL);
}
int usr2_mask_has_sigtrap(void)
{
    struct sigaction cur;
    sigaction(SIGUSR2, NULL, &cur);
    return sigismember(&cur.sa_mask, SIGTRAP);
}
"""


@pytest.fixture
def helper_lib(tmp_path):
    cc = os.environ.get("CC", "cc")
    src, lib = tmp_path / "helper.c", tmp_path / "libpvptraphelper.so"
    src.write_text(HELPER_C)
    try:
        subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(lib), str(src)], check=True,
                       capture_output=True, timeout=120)
    except FileNotFoundError:
        pytest.skip(f"no C compiler ({cc})")
    return str(lib)


def test_objects_loaded_later_are_taken_over_at_the_next_batch(helper_lib, selftest_native):
    import ctypes
    lib = ctypes.CDLL(helper_lib)
    assert lib.sigtrap_blocked_after_blocking_all() == 1   # not ours yet: the C library's
    assert lib.sigtrap_blocked_in_a_handler_during_sigsuspend() == 1
    pvpatch.runtime_patch({"selftest": "alt"})             # a batch that writes int3
    assert lib.sigtrap_blocked_after_blocking_all() == 0   # its GOT entry is ours now
    assert lib.sigtrap_blocked_in_a_handler_during_sigsuspend() == 0


def test_chained_handler_gets_its_sa_mask(helper_lib, selftest_native):
    import ctypes
    pvpatch.runtime_patch({"selftest": "pv"})              # ours installed, the lib taken over
    lib = ctypes.CDLL(helper_lib)
    pvpatch.runtime_patch({"selftest": "alt"})
    prev = signal.getsignal(signal.SIGTRAP)
    try:
        assert lib.install_trap_handler_masking_usr1() == 0  # recorded as the chained handler
        patcher._runtime_patch({"selftest": "native"}, hook=_core.selftest_hook())
        assert lib.seen_and_usr1_blocked() == 0              # our own trap did not reach it
        signal.raise_signal(signal.SIGTRAP)                  # a foreign one does, masked
        assert lib.seen_and_usr1_blocked() == 11
    finally:
        signal.signal(signal.SIGTRAP, prev if prev is not None else signal.SIG_DFL)


def test_handlers_installed_before_import_lose_sigtrap_from_their_mask(helper_lib):
    # Installed before pvpatch took the library's GOT over: the sweep before the first batch
    # that writes int3 (registration, at import) removes SIGTRAP from the handler's mask.
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import ctypes, json
        lib = ctypes.CDLL({helper_lib!r})
        assert lib.install_usr2_with_a_full_mask() == 0
        before = lib.usr2_mask_has_sigtrap()
        import pvpatch
        print(json.dumps([before, lib.usr2_mask_has_sigtrap()]))
    """)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [1, 0]
