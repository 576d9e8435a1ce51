"""fork while batches run, from C threads and from Python: every child's copy of the code is one
no batch was writing (no int3 in a site, one variant throughout), its Python-level locks are
usable, and it patches its own copy at once.  Every wait is bounded: a hung child is killed and
reported."""
import os
import signal
import threading
import time
from array import array

import pytest

import pvpatch
import pvpatch.locks as locks
from pvpatch import _core, patcher

CYCLE = ("pv", "alt", "native")
VALUE = {"native": 0x1001, "pv": 0x1002, "alt": 0x1003}
CHILD_CODES = {0: "ok", 10: "int3 in a site", 11: "a site returned no variant's value",
               12: "sites hold different variants", 13: "runtime_patch in the child failed",
               14: "an exception in the child"}


def _wait(pid, timeout):
    """Exit status of pid, or 'hung' (then killed) after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            if os.WIFSIGNALED(status):
                return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
            return CHILD_CODES.get(os.WEXITSTATUS(status), os.WEXITSTATUS(status))
        time.sleep(0.0005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "hung"


class PatchLoop:
    """runtime_patch of the selftest group in a thread, until stopped."""

    def __init__(self):
        self.stop, self.errors, self.batches = threading.Event(), [], 0
        self.t = threading.Thread(target=self._run, name="patch-loop")

    def _run(self):
        i = 0
        while not self.stop.is_set():
            try:
                self.batches += pvpatch.runtime_patch({"selftest": CYCLE[i % 3]}).batches
            except Exception as exc:  # reported by the test
                self.errors.append(repr(exc))
                return
            i += 1

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.t.join(30)
        assert not self.t.is_alive(), "the patching thread hung"


def _child_checks(patch_to):
    """In a child: the code, the results, then a switch of its own.  Returns an exit code."""
    for s in pvpatch.core_module.sites:
        if patcher.site_bytes(s)[0] == 0xCC:
            return 10
    cur = pvpatch.current()["selftest"]
    for s in pvpatch.registry.sites("selftest"):
        if patcher.site_bytes(s) != s.renderings[cur]:
            return 12
    if _core.selftest_call(0) != VALUE[cur]:
        return 11
    if _core.selftest_call(4, 3, 4) != 7 + {"native": 0, "pv": 0x200, "alt": 0x300}[cur]:
        return 11
    target = patch_to if patch_to != cur else "native" if cur != "native" else "pv"
    pvpatch.runtime_patch({"selftest": target})
    if _core.selftest_call(0) != VALUE[target] or pvpatch.current()["selftest"] != target:
        return 13
    return 0


def _fork_and_check(patch_to, timeout=10.0):
    pid = os.fork()
    if pid == 0:
        code = 14
        try:
            code = _child_checks(patch_to)
        finally:
            os._exit(code)
    return _wait(pid, timeout)


def test_forks_from_c_threads_while_batches_run(selftest_native):
    sites = array("Q", [s.addr for s in pvpatch.core_module.sites]).tobytes()
    with PatchLoop() as loop:
        time.sleep(0.05)
        res = _core.fork_from_threads(sites, 4, 75, 5.0)
        batches = loop.batches
    assert loop.errors == []
    assert batches > 20, "the batches did not run while the children were forked"
    assert res["fork_errno"] == 0, os.strerror(res["fork_errno"])
    assert res["ok"] == 300, res


def test_python_forks_while_another_thread_patches(selftest_native):
    outcomes = {}
    with PatchLoop() as loop:
        for k in range(200):
            r = _fork_and_check(CYCLE[k % 3])
            outcomes[r] = outcomes.get(r, 0) + 1
        batches = loop.batches
    assert loop.errors == []
    assert batches > 20
    assert outcomes == {"ok": 200}, outcomes


# (The lock switch counters, which had a Python lock of their own, are C atomics now: the
# child's locks.switches() below still shows that reading them cannot block.)
@pytest.mark.parametrize("lock", ["patcher"])
def test_child_forked_while_a_python_lock_is_held_can_patch(selftest_native, lock):
    """The issue's reproduction: another thread holds the lock at the fork."""
    held, release = threading.Event(), threading.Event()

    def holder():
        with patcher._lock:
            held.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert held.wait(10)
        pid = os.fork()
        if pid == 0:
            code = 14
            try:
                locks.switches()
                code = _child_checks("alt")
            finally:
                os._exit(code)
        assert _wait(pid, 10) == "ok"
    finally:
        release.set()
        t.join(10)
