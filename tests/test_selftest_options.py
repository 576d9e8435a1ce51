"""The selftest's hostile options do what they say: a thread that runs sites with every signal
blocked, and a site-running signal handler installed with a full mask.  No batch runs here (that
is tests/test_selftest_hostile.py); these check the threads, masks and counters themselves."""
import os
import subprocess
import sys
import time

import pytest

import pvpatch  # noqa: F401  (registers the core)
from pvpatch import _core


def _sigblk(tid):
    try:
        with open(f"/proc/self/task/{tid}/status") as f:
            for line in f:
                if line.startswith("SigBlk:"):
                    return int(line.split()[1], 16)
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def test_blocker_thread_runs_sites_with_every_signal_blocked():
    _core.selftest_start(1, 1, 2000.0, 0, True, False)
    try:
        deadline = time.monotonic() + 10
        seen_full = False
        while time.monotonic() < deadline and not seen_full:
            tid = _core.selftest_stats()["blocker_tid"]
            blk = _sigblk(tid) if tid else None
            # Every signal the kernel lets a thread block (SIGKILL, SIGSTOP never are).
            seen_full = blk is not None and blk & (1 << (5 - 1)) and blk & (1 << (10 - 1))
            time.sleep(0.001)
        assert seen_full, "the blocker thread was never seen with SIGTRAP and SIGUSR1 blocked"
    finally:
        st = _core.selftest_stop(10.0)
    assert st["blocker_calls"] > 0 and st["blocker_passes"] > 0
    assert st["blocker_failures"] == 0 and st["executor_failures"] == 0
    # Its sites and the executors' are checked the same way.
    assert st["first_failure_site"] == -1


@pytest.mark.parametrize("fullmask", [False, True])
def test_handler_mask_option(fullmask):
    _core.selftest_start(1, 1, 4000.0, 0, False, fullmask)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _core.selftest_stats()["handler_calls"] < 50:
            time.sleep(0.01)
    finally:
        st = _core.selftest_stop(10.0)
    assert st["handler_calls"] >= 50 and st["handler_failures"] == 0
    if fullmask:
        assert st["handler_sigtrap_blocked"] == st["signals"]
    else:
        assert st["handler_sigtrap_blocked"] == 0


def test_selftest_start_rejects_bad_arguments_and_starts_nothing():
    with pytest.raises(ValueError, match="threads 1.."):
        _core.selftest_start(0, 1, 10.0, 0, True, True)
    with pytest.raises(RuntimeError, match="not running"):
        _core.selftest_stop(1.0)


def test_cli_accepts_the_options_without_patching():
    """--duration 0: no batch, so it runs on any trap handler; the flags reach the result."""
    out = subprocess.run([sys.executable, "-m", "pvpatch.cli", "selftest", "--duration", "0",
                          "--threads", "1", "--hostile", "--json"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    import json
    res = json.loads(out.stdout)
    assert res["sigblock_thread"] and res["fullmask_handler"]
    assert res["failures"] == 0 and res["batches"] == 0
