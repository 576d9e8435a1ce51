"""`pvpatch bench locks`: every lock side by side at each writer count, the JSON carrying the
machine's CPU count and load (behaviour only: no figure is asserted), and the two peers added
for it (futex-park, mcs) doing what they are named for."""
import json
import os
import subprocess
import sys
import time

from pvpatch import _core, bench_locks

LOCKS = ["pvpatch native", "pvpatch pv", "pvpatch auto", *bench_locks.PEERS]


def test_bench_locks_json_has_every_lock_and_the_machine(tmp_path):
    out = tmp_path / "locks.json"
    p = subprocess.run([sys.executable, "-m", "pvpatch.cli", "bench", "locks", "--writers",
                        "1,3", "--seconds", "0.05", "--rounds", "1", "--json", str(out)],
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr
    assert "pvpatch auto" in p.stdout and "/ pthread-mutex" in p.stdout  # the table too
    res = json.loads(out.read_text())["locks"]
    assert res["cpus"] == os.cpu_count()
    assert len(res["loadavg"]) == 3 and len(res["loadavg_after"]) == 3
    assert res["violations"] == 0
    assert [(r["writers"], r["lock"]) for r in res["rows"]] == \
        [(n, lock) for n in (1, 3) for lock in LOCKS]
    for r in res["rows"]:
        assert r["writers_per_cpu"] == r["writers"] / os.cpu_count()
        assert r["acquisitions"] >= 0 and r["acq_per_s"] >= 0 and r["acq_per_s_median"] >= 0
        assert len(r["acq_per_s_segments"]) == 1  # --rounds 1
        assert r["max"] >= r["min"] >= 0
        # A writer times its acquisitions from its first in a segment on (the first may have
        # begun before): some writer with two or more gives samples.
        if r["acquisitions"] > r["writers"]:
            assert r["lat_samples"] > 0 and 0 < r["lat_p50_ns"] <= r["lat_p99_ns"]
        if r["lock"].startswith("pvpatch"):
            assert set(r["variants_ran"]) <= {"native", "pv", "hybrid"}
        if r["lock"] in ("pvpatch native", "pvpatch pv"):
            assert r["variants_ran"] == [r["lock"].split()[1]]
        if r["lock"].startswith("pvpatch"):
            # The lock's own statistics cover the measured segments: every acquisition the
            # writers counted there is in them, but for one per writer at each end (a writer
            # counts its acquisition after its release, the lock when it acquires).
            st = r["lock_stats"]
            assert st["acquisitions"] >= r["acquisitions"] - r["writers"]
            assert st["acquisitions"] >= st["contended"] >= 0
            assert st["handovers"] <= st["contended"] and st["handover_ns"] >= 0
            assert r["judge"][0] in (-1, 0, 1) and r["judge"][1]
            if r["writers"] == 1:  # one thread cannot contend with itself
                assert st["contended"] == 0 and st["sleeps"] == 0
    assert [(r["writers"], r["lock"]) for r in res["ratios"]] == \
        [(n, f"pvpatch {v}") for n in (1, 3) for v in bench_locks.VARIANTS]
    for r in res["ratios"]:
        assert r["best_peer"] in bench_locks.PEERS
        fair = [x for x in res["rows"] if x["writers"] == r["writers"]
                and x["lock"] in bench_locks.PEERS and x["max_min"] is not None
                and x["max_min"] <= bench_locks.FAIR_MAX_MIN]
        assert r["best_fair_peer"] in [x["lock"] for x in fair] + ([] if fair else [None])
        assert {"vs_best_peer", "vs_best_fair_peer", "vs_pthread_mutex"} <= set(r)


def test_bench_locks_bad_input_names_the_thing_and_starts_nothing():
    for kwargs, what in [({"writers": (0,)}, "writer count 0"),
                         ({"peers": ("pvpatch",)}, "peer 'pvpatch'"),
                         ({"variants": ("hybrid",)}, "variant 'hybrid'")]:
        try:
            bench_locks.bench_locks(**kwargs)
        except ValueError as e:
            assert what in str(e)
        else:
            raise AssertionError(f"{kwargs} accepted")
    p = subprocess.run([sys.executable, "-m", "pvpatch.cli", "bench", "locks", "--writers",
                        "1,0"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--writers" in p.stderr and "1..1024" in p.stderr


def test_latency_samples_belong_to_their_epoch():
    h = _core.torture_start(2, 0, "tas")
    try:
        e1 = _core.torture_epoch(h)
        time.sleep(0.05)
        lat1 = _core.torture_latency(h, e1)
        e2 = _core.torture_epoch(h)
        time.sleep(0.05)
        lat2 = _core.torture_latency(h, e2)
        # Each writer keeps its last 2048 samples: e2's have replaced e1's by now.
        assert lat1 and lat2 and e2 == e1 + 1 and all(x > 0 for x in lat1 + lat2)
        assert len(lat2) <= 2 * 2048
        assert _core.torture_latency(h, e2 + 100) == []
    finally:
        res = _core.torture_stop(h, 10.0)
    assert res["joined"]


def test_futex_park_parks_when_oversubscribed():
    """More writers than CPUs and a critical section longer than a time slice now and then:
    waiters must end up asleep in FUTEX_WAIT (and every one be woken: the run stops)."""
    h = _core.torture_start(3 * (os.cpu_count() or 1), 20000, "futex-park")
    deadline = time.monotonic() + 10
    while _core.torture_state(h)["futex_sleeps"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    sleeps = _core.torture_state(h)["futex_sleeps"]
    res = _core.torture_stop(h, 10.0)
    writes, fails = _core.torture_read(h)
    assert sleeps > 0
    assert res["joined"] and sum(fails) == 0
    assert res["kinds"] == {"futex-park": (sum(writes), sum(writes))}
