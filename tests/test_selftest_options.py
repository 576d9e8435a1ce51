"""The selftest's hostile options do what they say: a thread that runs sites with every signal
blocked, and a site-running signal handler installed with a full mask.  The long run under
patching is tests/test_selftest_hostile.py; these check the threads, masks and counters."""
import signal
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
            # Every signal it asked for; SIGTRAP is kept out by pvpatch (masks.c).
            seen_full = (blk is not None and all(blk & (1 << (sig - 1)) for sig in
                                                  (signal.SIGINT, signal.SIGUSR1, signal.SIGTERM))
                         and not blk & (1 << (signal.SIGTRAP - 1)))
            time.sleep(0.001)
        assert seen_full, "the blocker thread was never seen with every signal but SIGTRAP blocked"
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
    assert st["handler_fullmask"] == (st["signals"] if fullmask else 0)
    assert st["handler_sigtrap_blocked"] == 0  # kept out by pvpatch (masks.c)


def test_selftest_start_rejects_bad_arguments_and_starts_nothing():
    with pytest.raises(ValueError, match="threads 1.."):
        _core.selftest_start(0, 1, 10.0, 0, True, True)
    with pytest.raises(RuntimeError, match="not running"):
        _core.selftest_stop(1.0)


def test_cli_hostile_flags_reach_the_result():
    out = subprocess.run([sys.executable, "-m", "pvpatch.cli", "selftest", "--duration", "0.3",
                          "--threads", "1", "--hostile", "--json"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    import json
    res = json.loads(out.stdout)
    assert res["sigblock_thread"] and res["fullmask_handler"]
    assert res["failures"] == 0 and res["sigblock_calls"] > 0
