"""The lock's own statistics (pvlock_stats), the local judge built on them, and the switching
protocol as C runs it (pvlock_transition), driven with recording callbacks.

Real threads on the real lock sites; behaviour only (counts and verdicts, never speed)."""
import time

import pytest

import pvpatch
import pvpatch.locks as locks
from pvpatch import _core

FIELDS = ("acquisitions", "contended", "sleeps", "wakes", "handovers", "handover_ns")


@pytest.fixture
def lock_native():
    tune = _core.lock_tune()
    yield
    locks.install()
    if pvpatch.current()["lock"] == "native":
        _core.lock_set_mode(locks.MODES["native"])
    else:
        pvpatch.runtime_patch({"lock": "native"})
    assert locks.mode() == "native"
    _core.lock_tune(pv_spin=tune[0], rescue=tune[1])


def run(writers, seconds, hold_ns=0):
    """Writers on pvpatch's lock sites for `seconds`; returns (writes, stats delta)."""
    s0 = _core.pvlock_stats()
    h = _core.torture_start(writers, hold_ns, "pvpatch")
    try:
        time.sleep(seconds)
    finally:
        res = _core.torture_stop(h, 10.0)
    assert res["joined"], f"writers {res['stuck']} never came back"
    writes, fails = _core.torture_read(h)
    assert sum(fails) == 0
    s1 = _core.pvlock_stats()
    return sum(writes), {k: s1[k] - s0[k] for k in FIELDS}


# ---- statistics -----------------------------------------------------------------------------

def test_stats_count_every_acquisition_and_nothing_uncontended(lock_native):
    writes, d = run(1, 0.2)
    assert writes > 0 and d["acquisitions"] == writes  # the fast path counts too
    assert d["contended"] == d["sleeps"] == d["handovers"] == d["handover_ns"] == 0


@pytest.mark.parametrize("variant", ["native", "pv"])
def test_stats_see_contention_and_hand_overs(lock_native, variant):
    pvpatch.runtime_patch({"lock": variant})
    writes, d = run(4, 0.5, hold_ns=2000)
    assert d["acquisitions"] == writes
    assert 0 < d["contended"] <= d["acquisitions"]
    assert d["handovers"] <= d["contended"]
    assert (d["handovers"] == 0) == (d["handover_ns"] == 0)


def test_stats_see_pv_sleeps_and_their_wakes(lock_native):
    _core.lock_tune(pv_spin=8)
    pvpatch.runtime_patch({"lock": "pv"})
    writes, d = run(8, 0.5, hold_ns=1000)
    assert d["acquisitions"] == writes
    assert d["sleeps"] > 0, "pv waiters with an 8-pause spin bound never slept"
    assert d["wakes"] > 0 and d["handovers"] > 0 and d["handover_ns"] > 0


def test_stats_survive_the_threads_that_made_them(lock_native):
    before = _core.pvlock_stats()["acquisitions"]
    run(3, 0.1)  # the writers have exited: their counts stay
    assert _core.pvlock_stats()["acquisitions"] > before


# ---- the local judge --------------------------------------------------------------------

def delta(**kw):
    return {k: kw.get(k, 0) for k in FIELDS}


@pytest.mark.parametrize("d,mode,verdict,why", [
    (delta(acquisitions=10), "native", -1, "too few acquisitions"),
    (delta(acquisitions=10**6), "native", 1, "uncontended"),
    (delta(acquisitions=10**6, contended=20000), "pv", 1, "uncontended"),
    (delta(acquisitions=10**6, contended=21000), "native", 0, "contended"),
    (delta(acquisitions=10**6, contended=300000), "pv", 0, "contended"),
    (delta(acquisitions=10**6, contended=10, sleeps=1), "pv", 0, "slept"),
    (delta(acquisitions=10**6, contended=10, handovers=10, handover_ns=10 * 25000), "native", 0,
     "not running"),
    (delta(acquisitions=10**6, contended=10, handovers=10, handover_ns=10 * 500), "native", 1,
     "uncontended"),
    # a collapsed fair lock: a few dozen acquisitions, each a scheduling slice late
    (delta(acquisitions=30, contended=30, handovers=29, handover_ns=29 * 15_000_000), "native",
     0, "not running"),
])
def test_judge_rule(d, mode, verdict, why):
    r, text = _core.lock_judge_delta(d, mode)
    assert r == verdict and why in text, text
    assert f"mode {mode}" in text


@pytest.mark.parametrize("d,mode,match", [
    ({"acquisitions": 1}, "native", "no 'contended'"),
    (delta(acquisitions=-1), "native", "'acquisitions' is not a count"),
    (delta(), "fast", "mode 'fast'"),
])
def test_judge_bad_input_is_refused_by_name(d, mode, match):
    with pytest.raises((KeyError, ValueError), match=match):
        _core.lock_judge_delta(d, mode)


def test_local_judge_follows_the_workload(lock_native):
    _core.lock_local_judge()  # the interval starts here
    run(1, 0.3)
    r, why = _core.lock_local_judge()
    assert r == 1 and "uncontended" in why, why
    _core.lock_tune(pv_spin=8)
    pvpatch.runtime_patch({"lock": "pv"})
    run(8, 0.5, hold_ns=1000)
    r, why = _core.lock_local_judge()
    assert r == 0 and "mode pv" in why, why
    r, why = _core.lock_local_judge()  # nothing ran since the last call
    assert r == -1 and "too few" in why, why


# ---- the transition in C ----------------------------------------------------------------

def test_transition_runs_the_protocol_steps_in_order(lock_native):
    """No writers run: recording callbacks stand in for the batches, and the mode word is read
    at each step."""
    calls = []

    def apply(v):
        calls.append((v, locks.mode()))

    def check():
        calls.append(("check", locks.mode()))
        return True

    assert _core.lock_transition("native", "pv", apply, 1.0, check) == ("ok", "")
    assert calls == [("hybrid", "native"), ("check", "native"), ("pv", "pv")]
    assert locks.mode() == "pv"
    calls.clear()
    assert _core.lock_transition("pv", "native", apply, 1.0, check) == ("ok", "")
    assert calls == [("hybrid", "pv"), ("native", "hybrid")] and locks.mode() == "native"
    calls.clear()
    assert _core.lock_transition("native", "native", apply, 1.0, check) == ("ok", "")
    assert calls == []  # code and mode word agree: nothing to do


def test_transition_refuses_pv_over_unlock_sites_that_do_not_kick(lock_native):
    calls = []
    status, msg = _core.lock_transition("native", "pv", calls.append, 1.0, lambda: False)
    assert status == "not-kicking" and "unlock site" in msg
    assert calls == ["hybrid"] and locks.mode() == "native"
    # Without a check the runtime's own reader of the sites' bytes decides; the recording
    # apply patched nothing, so the unlock sites still hold the inline store.
    calls.clear()
    status, msg = _core.lock_transition("native", "pv", calls.append, 1.0)
    assert status == "not-kicking" and "mode stays native" in msg, msg
    assert calls == ["hybrid"] and locks.mode() == "native"


def test_transition_passes_a_callbacks_exception_through(lock_native):
    class Boom(Exception):
        pass

    def apply(v):
        raise Boom(v)

    with pytest.raises(Boom, match="hybrid"):
        _core.lock_transition("native", "pv", apply, 1.0, lambda: True)
    assert locks.mode() == "native"

    def check():
        raise locks.UnlockSitesNotKicking("site x")

    with pytest.raises(locks.UnlockSitesNotKicking, match="site x"):
        _core.lock_transition("native", "pv", lambda v: None, 1.0, check)
    assert locks.mode() == "native"


@pytest.mark.parametrize("args,match", [
    (("native", "turbo", None, 1.0), "no transition to variant 'turbo'"),
    (("fast", "pv", None, 1.0), "current variant 'fast'"),
    (("native", "pv", None, -1.0), "grace timeout -1 s"),
])
def test_transition_bad_input_is_refused_by_name(lock_native, args, match):
    calls = []
    args = (args[0], args[1], calls.append, args[3])
    with pytest.raises(ValueError, match=match):
        _core.lock_transition(*args)
    assert calls == [] and locks.mode() == "native"
