"""Live patching: the trap path, foreign traps, W^X, and the selftest (the trap path in hostile
situations: tests/test_trap.py)."""
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading

import pytest

import pvpatch
from pvpatch import _core, patcher, wx


def test_patcher_traps_on_its_own_int3_and_completes_the_site(selftest_native):
    # native -> alt: the hook's site goes from a call to alt's inline template, which takes the
    # int3 protocol on every writer path (a call -> call switch can be an atomic flip with no
    # int3 to trap on).
    ev = patcher._runtime_patch({"selftest": "alt"}, hook=_core.selftest_hook())
    assert ev.traps_on_patcher == 1 and ev.traps == 1
    assert _core.selftest_call(0) == 0x1003


def test_foreign_sigtrap_reaches_its_own_handler(selftest_native):
    seen = []
    old = signal.signal(signal.SIGTRAP, lambda sig, frame: seen.append(sig))
    try:
        pvpatch.runtime_patch({"selftest": "pv"})  # reinstalls ours, chained to Python's
        # 1. A SIGTRAP sent by kill (si_code SI_USER).
        signal.raise_signal(signal.SIGTRAP)
        assert seen == [signal.SIGTRAP]
        # 2. An int3 that is not at a site: code `int3; mov $42,%eax; ret`.
        exe = _core.map_code(4096, "foreign-int3")
        _core.write_code(exe, bytes.fromhex("ccb82a000000c3"))
        assert ctypes.CFUNCTYPE(ctypes.c_long)(exe)() == 42
        for _ in range(100):  # Python runs its handler at the next bytecode boundary
            if len(seen) == 2:
                break
        assert seen == [signal.SIGTRAP, signal.SIGTRAP]
        assert _core.selftest_call(0) == 0x1002  # and ours still works
        patcher._runtime_patch({"selftest": "alt"}, hook=_core.selftest_hook())
        assert _core.selftest_call(0) == 0x1003
        assert len(seen) == 2  # our own trap did not reach the foreign handler
    finally:
        signal.signal(signal.SIGTRAP, old)


def test_no_writable_and_executable_mapping_during_a_long_patch_loop(selftest_native):
    sampler = wx.Sampler()
    sampler.start()
    try:
        for i in range(3000):
            patcher._runtime_patch({"selftest": ("pv", "alt", "native")[i % 3]},
                                   hook=_core.selftest_hook() if i % 10 == 0 else 0)
    finally:
        samples, bad = sampler.stop()
    assert samples > 50
    assert bad == [], bad
    assert wx.writable_executable() == []


def test_selftest_nmi_level_3():
    out = subprocess.run([sys.executable, "-m", "pvpatch.cli", "selftest", "--duration", "3",
                          "--nmi-level", "3", "--json"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    res = json.loads(out.stdout)
    for key in ("batches", "sites_patched", "site_calls", "traps", "traps_helped",
                "traps_on_patcher", "signals", "failures"):
        assert key in res
    assert res["failures"] == 0 and not res["stalled"]
    assert res["batches"] > 100 and res["signals"] > 100 and res["handler_lock_taken"] > 0
    assert res["traps"] > 0 and res["traps_on_patcher"] > 0 and res["traps_helped"] > 0


@pytest.mark.parametrize("level", [0, 1, 2])
def test_selftest_levels(level):
    out = subprocess.run([sys.executable, "-m", "pvpatch.cli", "selftest", "--duration", "1",
                          "--nmi-level", str(level), "--json"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    res = json.loads(out.stdout)
    assert res["failures"] == 0 and res["traps_on_patcher"] > 0
    assert (res["handler_site_calls"] > 0) == (level >= 1)
    assert (res["handler_lock_taken"] > 0) == (level >= 2)


@pytest.mark.parametrize("writer", ["alias", "proc-mem"])
def test_bench_patch_reports_three_syncs_per_batch(writer):
    out = subprocess.run([sys.executable, "-m", "pvpatch.cli", "bench", "patch", "--repeat",
                          "3", "--json"], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PVPATCH_WRITER=writer))
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)["patch"]
    rows = res["rows"]
    assert res["writer"] == writer and [r["sites"] for r in rows] == [10, 100, 1000, 10000]
    if writer == "alias":
        # 3 for every batch that writes int3; 1 only for a batch made entirely of atomic call
        # flips
        assert all(3 in r["syncs_per_batch"] and set(r["syncs_per_batch"]) <= {1, 3}
                   for r in rows)
    else:
        # No atomic flip through /proc/self/mem: every batch takes the int3 protocol.
        assert all(r["syncs_per_batch"] == [3] for r in rows), rows


def test_concurrent_callers_are_serialised(selftest_native):
    errors, done = [], []

    def patch_loop(variants):
        try:
            for i in range(300):
                ev = pvpatch.runtime_patch({"selftest": variants[i % len(variants)]})
                assert ev.syncs in (0, 3)
            done.append(1)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=patch_loop, args=(v,))
               for v in (("pv", "alt"), ("native", "pv"), ("alt", "native"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a patching thread hung"
    assert errors == [] and len(done) == 3
    # Whatever won last, every site holds exactly that variant's rendering.
    cur = pvpatch.current()["selftest"]
    for s in pvpatch.core_module.sites:
        if s.group == "selftest":
            assert patcher.site_bytes(s) == s.renderings[cur]


def test_fork_child_patches_its_own_copy(selftest_native):
    """MAP_SHARED code must not leak patches across fork, either way."""
    r1, w1 = os.pipe()  # child -> parent
    r2, w2 = os.pipe()  # parent -> child
    pid = os.fork()
    if pid == 0:  # the child: patch, report, wait for the parent's patch, report again
        status = 1
        try:
            os.close(r1)
            os.close(w2)
            pvpatch.runtime_patch({"selftest": "alt"})
            os.write(w1, b"%d\n" % _core.selftest_call(0))
            os.read(r2, 1)
            os.write(w1, b"%d\n" % _core.selftest_call(0))
            status = 0
        finally:
            os._exit(status)
    os.close(w1)
    os.close(r2)
    with os.fdopen(r1) as fromchild:
        assert int(fromchild.readline()) == 0x1003          # the child's switch...
        assert _core.selftest_call(0) == 0x1001             # ...is not the parent's
        pvpatch.runtime_patch({"selftest": "pv"})
        os.write(w2, b"x")
        assert int(fromchild.readline()) == 0x1003          # the parent's is not the child's
    os.close(w2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _core.selftest_call(0) == 0x1002
