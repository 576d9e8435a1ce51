"""`pvpatch bench patch --threads N`: the same batches alone, with idle threads and with busy
threads running (and trapping on) the sites being patched."""
import json
import os
import subprocess
import sys

import pytest

from pvpatch import _core


def test_bench_patch_with_threads_reports_every_load_and_three_syncs():
    out = subprocess.run([sys.executable, "-m", "pvpatch.cli", "bench", "patch", "--repeat", "5",
                          "--threads", "8", "--json"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)["patch"]
    assert res["cpus"] == os.cpu_count() and len(res["loadavg"]) == 3
    assert res["threads"] == 8
    rows = res["rows"]
    assert [(r["sites"], r["load"]) for r in rows] == [
        (n, load) for n in (10, 100, 1000, 10000) for load in ("alone", "idle", "busy")]
    for r in rows:
        # whatever the threads do: 3 for a batch that writes int3, 1 for one made only of
        # atomic call flips
        assert 3 in r["syncs_per_batch"] and set(r["syncs_per_batch"]) <= {1, 3}, r
        assert r["min_ms"] <= r["median_ms"] <= r["p99_ms"]
        assert r["busy_failures"] == 0, r
        assert r["atomic_flips_per_batch"] >= 0
        assert (r["busy_calls"] > 0) == (r["load"] == "busy"), r
        if os.path.exists("/proc/thread-self/schedstat"):
            # each call's wait for a CPU is part of its wall time, never more
            assert 0 <= r["runq_wait_median_ms"] <= r["runq_wait_p99_ms"], r
            assert r["running_median_ms"] <= r["median_ms"] + 1e-9, r
            assert r["running_p99_ms"] <= r["p99_ms"] + 1e-9, r
    # Whether the busy threads ran into a batch depends on the scheduler (2 CPUs, and whatever
    # else runs): counted, not asserted here (tests/test_selftest_hostile.py insists on it).
    assert all(r["traps_per_batch"] >= 0 for r in rows)


def test_bench_threads_bad_arguments_start_nothing():
    with pytest.raises(ValueError, match="busy threads need functions"):
        _core.bench_threads_start([], 2, 0)
    with pytest.raises(ValueError, match="at most"):
        _core.bench_threads_start([], 0, 100000)
    with pytest.raises(RuntimeError, match="not running"):
        _core.bench_threads_stop()
