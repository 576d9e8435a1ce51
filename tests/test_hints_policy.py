"""Decisions: the host's hysteresis (Decider), the timeline, and the guest's policy (fake clock)."""
from __future__ import annotations

import time

import pytest

from pvpatch.errors import PvpatchError
from pvpatch.hints import abi
from pvpatch.hints.policy import Policy
from pvpatch.hints.publisher import Decider, Thresholds, parse_timeline
from pvpatch.hints.reader import HintState

CALM = {"online_cpus": 2, "runnable": 1, "steal": 0, "psi_some_avg10": 0, "cg_throttled": 0}
BUSY = dict(CALM, runnable=8)


def test_decider_starts_without_realtime_and_earns_it():
    d = Decider(Thresholds(enter_samples=2, leave_samples=3))
    assert [d.update(CALM) for _ in range(4)] == [False, False, True, True]
    assert d.reason == abi.REASON_UNDERSUBSCRIBED


def test_decider_enters_after_k_samples_and_leaves_after_more():
    d = Decider(Thresholds(enter_samples=2, leave_samples=3))
    for _ in range(3):
        d.update(CALM)
    assert d.update(BUSY) is True          # one busy sample is noise
    assert d.update(CALM) is True
    assert d.update(BUSY) is True
    assert d.update(BUSY) is False         # two in a row: oversubscribed
    assert d.reason == abi.REASON_RUNNABLE
    assert [d.update(CALM) for _ in range(3)] == [False, False, True]


@pytest.mark.parametrize("key,high,mid,reason", [
    ("steal", 1500, 700, abi.REASON_STEAL),
    ("psi_some_avg10", 3000, 1000, abi.REASON_PSI),
    ("cg_throttled", 5000, 500, abi.REASON_THROTTLED),
])
def test_decider_hysteresis_band(key, high, mid, reason):
    d = Decider(Thresholds(enter_samples=1, leave_samples=2))
    d.update(CALM), d.update(CALM)
    assert d.update(dict(CALM, **{key: high})) is False
    assert d.reason == reason
    # Between the low and the high threshold: stays oversubscribed however long.
    assert not any(d.update(dict(CALM, **{key: mid})) for _ in range(10))
    assert [d.update(CALM) for _ in range(2)] == [False, True]


def test_decider_quota_lowers_the_cpu_count():
    d = Decider(Thresholds(enter_samples=1, leave_samples=1))
    m = dict(CALM, runnable=2, cg_quota_mcpu=1000)  # 2 runnable on a 1-CPU quota
    assert d.update(m) is False and d.reason == abi.REASON_RUNNABLE
    assert d.update(dict(m, cg_quota_mcpu=0)) is True  # 0 = no quota


def test_decider_without_runnable_never_grants_realtime():
    d = Decider(Thresholds(enter_samples=1, leave_samples=1))
    assert not any(d.update({"steal": 0}) for _ in range(5))


def test_timeline_parse_and_errors():
    assert parse_timeline("0:realtime,10:oversubscribed,20.5:realtime") == [
        (0.0, abi.HINT_REALTIME), (10.0, 0), (20.5, abi.HINT_REALTIME)]
    for bad, frag in [("", "empty"), ("x:realtime", "x:realtime"), ("5", "'5'"),
                      ("0:fast", "fast"), ("5:realtime,2:realtime", "back in time"),
                      ("-1:realtime", "-1:realtime")]:
        with pytest.raises(PvpatchError, match=frag):
            parse_timeline(bad)


# --- the guest policy, with a clock the test moves -------------------------------------------

class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def state(realtime: bool | None, stale=False) -> HintState:
    """realtime None: no page at all."""
    if realtime is None:
        return HintState("/x", False, False, "missing", 0)
    now = time.monotonic_ns()
    p = abi.HintPage(publisher_pid=1, active_hints=abi.HINT_REALTIME if realtime else 0,
                     ever_hints=abi.HINT_REALTIME, heartbeat_ns=now, changed_ns=now,
                     started_ns=now, reason=abi.REASON_SIMULATED)
    return HintState("/x", True, stale, "stale" if stale else "", now, p)


def make(**kw):
    clock = Clock()
    kw.setdefault("allowed_cpus", lambda: 2)
    return Policy({"lock": ("native", "pv")}, clock=clock, **kw), clock


def test_first_observation_decides_at_once():
    p, _ = make(min_dwell_s=5)
    d = p.observe(state(None))
    assert d.variants == {"lock": "pv"} and "no hints" in d.reason
    p, _ = make(min_dwell_s=5)
    assert p.observe(state(True)).variants == {"lock": "native"}


def test_stale_or_invalid_page_means_safe():
    p, c = make(min_dwell_s=0)
    assert p.observe(state(True)).mode == "fast"
    c.t += 1
    d = p.observe(state(True, stale=True))
    assert d.variants == {"lock": "pv"} and "stale" in d.reason


def test_single_cpu_affinity_means_safe_whatever_the_hint():
    p, _ = make(allowed_cpus=lambda: 1)
    d = p.observe(state(True))
    assert d.mode == "safe" and "1 CPU" in d.reason


def test_dwell_holds_back_and_deadline_releases():
    p, c = make(min_dwell_s=2.0)
    p.observe(state(True))                  # t=100: native
    c.t += 0.5
    assert p.observe(state(False)) is None  # held back by the dwell
    assert p.deadline() == pytest.approx(102.0)
    c.t = 101.9
    assert p.poll() is None
    c.t = 102.0
    d = p.poll()
    assert d.variants == {"lock": "pv"}
    assert p.poll() is None and p.deadline() is None


def test_held_back_change_is_dropped_if_no_longer_wanted():
    p, c = make(min_dwell_s=2.0)
    p.observe(state(True))
    c.t += 0.5
    assert p.observe(state(False)) is None
    c.t += 0.5
    assert p.observe(state(True)) is None   # back to what is in force: nothing to do
    c.t += 5
    assert p.poll() is None


def test_settle_delays_only_the_fast_direction():
    p, c = make(min_dwell_s=0, native_settle_s=1.0)
    assert p.observe(state(False)).mode == "safe"
    c.t += 0.1
    assert p.observe(state(True)) is None
    c.t += 0.5
    assert p.observe(state(True)) is None   # still settling (REALTIME held 0.6 s)
    c.t += 0.5
    assert p.poll().mode == "fast"
    c.t += 0.01
    assert p.observe(state(False)).mode == "safe"  # the safe direction does not settle


def test_flapping_signal_cannot_thrash():
    """A hint flipping every 10 ms for 10 s: switches are bounded by the dwell."""
    p, c = make(min_dwell_s=1.0)
    switches = 0
    rt = True
    for _ in range(1000):
        if p.observe(state(rt)):
            switches += 1
        if p.poll():
            switches += 1
        c.t += 0.01
        rt = not rt
    assert 5 <= switches <= 11  # at most one per dwell (+ the first)


def test_policy_rejects_bad_arguments():
    with pytest.raises(ValueError):
        Policy({}, clock=Clock())
    with pytest.raises(ValueError):
        Policy(min_dwell_s=-1)


def test_nothing_is_decided_before_the_first_observation():
    p, c = make()
    assert p.deadline() is None and p.poll() is None
    c.t += 100
    assert p.poll() is None and p.mode is None


def test_local_judge_vetoes_fast_only_after_holding():
    """The judge's verdict passes through hysteresis (docs/hints.md, "The local judge"): a
    "prefer safe" verdict must hold for judge_hold_s before it takes the process to the safe
    variant, and it can never grant the fast one without REALTIME."""
    p, c = make(min_dwell_s=0, judge_hold_s=1.0)
    assert p.observe(state(True)).mode == "fast"     # t = 100
    c.t += 0.25
    assert p.observe(state(True), judge=0, judge_why="contended") is None
    c.t += 0.5
    assert p.observe(state(True)) is None            # no new sample: the run goes on
    c.t += 0.25
    assert p.observe(state(True), judge=0, judge_why="contended") is None  # held 0.75 s
    c.t += 0.25
    d = p.observe(state(True), judge=0, judge_why="contended")             # held 1.0 s
    assert d.mode == "safe" and "local judge prefers the safe variant (contended)" in d.reason
    c.t += 0.25
    assert p.observe(state(True), judge=1) is None   # the way back holds too
    c.t += 0.5
    assert p.observe(state(True), judge=-1) is None  # no opinion interrupts the run
    c.t += 0.25
    assert p.observe(state(True), judge=1) is None   # a new run starts here
    c.t += 0.75
    assert p.observe(state(True), judge=1) is None
    c.t += 0.25
    assert p.observe(state(True), judge=1).mode == "fast"
    c.t += 0.25
    assert p.observe(state(False), judge=1).mode == "safe"  # no REALTIME: the judge cannot help
    with pytest.raises(ValueError, match="judge_hold_s"):
        Policy(judge_hold_s=-1)
