"""The guest side: pvpatch.auto() with the real runtime_patch, a real hostd, real processes."""
from __future__ import annotations

import json
import signal
import textwrap
import threading
import time

import pytest

import pvpatch
from pvpatch.errors import BatchRefused, RegistryError
from pvpatch.hints import abi, latency
from pvpatch.hints.guest import auto
from pvpatch.hints.publisher import Publisher

from hints_util import PY, Proc, hostd, wait_until

SELFTEST = {"selftest": ("native", "pv")}
M = {"online_cpus": 2, "runnable": 0}


def test_auto_follows_hostd_with_the_real_runtime_patch(tmp_path, selftest_native):
    """hostd --simulate flips REALTIME; auto() switches the selftest group after each flip and
    records publication-to-switch latency."""
    path = str(tmp_path / "hints")
    h = hostd(path, "--interval", "0.1", "--duration", "30",
              "--simulate", "0:realtime,0.6:oversubscribed,1.2:realtime,1.8:oversubscribed")
    handle = None
    try:
        h.wait_line("hints=realtime")
        handle = auto(path, groups=SELFTEST, min_dwell_s=0.2)
        assert handle.wait_events(4, 15), [e.to_json() for e in handle.events]
        evs = handle.events
        assert [e.variants["selftest"] for e in evs[:4]] == ["native", "pv", "native", "pv"]
        assert all(e.ok for e in evs)
        assert pvpatch.current()["selftest"] == "pv"
        for e in evs:
            assert e.latency_s is not None and e.latency_s > 0
            assert e.published_ns <= e.seen_ns <= e.decided_ns <= e.done_ns
        gens = [e.generation for e in evs[:4]]
        assert gens == sorted(gens) and len(set(gens)) == 4
    finally:
        if handle:
            handle.stop()
        h.kill(signal.SIGTERM)
        h.close()


def test_auto_without_a_page_takes_the_safe_default(tmp_path, selftest_native):
    handle = auto(str(tmp_path / "absent"), groups=SELFTEST)
    try:
        assert handle.wait_events(1, 10)
        e = handle.events[0]
        assert e.ok and e.variants == {"selftest": "pv"} and e.latency_s is None
        assert "missing" in e.reason
        assert pvpatch.current()["selftest"] == "pv"
    finally:
        handle.stop()


def test_auto_rejects_unknown_groups_and_variants_before_starting(tmp_path):
    before = set(t.name for t in threading.enumerate())
    with pytest.raises(RegistryError):
        auto(str(tmp_path / "h"), groups={"no-such-group": ("native", "pv")})
    with pytest.raises(RegistryError):
        auto(str(tmp_path / "h"), groups={"selftest": ("native", "warp")})
    assert set(t.name for t in threading.enumerate()) == before  # nothing started


def test_auto_records_refusals_and_keeps_going(tmp_path):
    """A patch callable that refuses (as runtime_patch does) is recorded, the agent retries
    the same decision with backoff, and follows the next publication when it comes."""
    calls = []

    def patch(changes):
        calls.append(dict(changes))
        if changes["lock"] == "native":
            raise BatchRefused("test: refused")
        return "ok"
    pub = Publisher(str(tmp_path / "hints"), interval_s=10.0).open()
    pub.publish(abi.HINT_REALTIME, M, abi.REASON_SIMULATED)
    handle = auto(pub.path, groups={"lock": ("native", "pv")}, min_dwell_s=0, patch=patch)
    try:
        assert handle.wait_events(2, 10), handle.events
        assert [e.ok for e in handle.events[:2]] == [False, False]
        assert [e.attempt for e in handle.events[:2]] == [1, 2]
        assert "refused" in handle.events[0].error and not handle.settled
        pub.publish(0, M, abi.REASON_RUNNABLE)
        wait_until(lambda: handle.in_force == {"lock": "pv"}, 10, "pv after the refusals")
        ev = handle.events[-1]
        assert ev.ok and ev.patch_event == "ok" and ev.attempt == 1 and handle.settled
        assert handle.agent.failures == len(handle.events) - 1
        assert handle.alive
    finally:
        handle.stop()
        pub.close()


def test_guest_process_switches_for_real_and_survives_sigkill(tmp_path):
    """End to end, two processes: hostd flips REALTIME; a guest process runs auto() while three
    of its threads call a patched site.  Every result is a valid variant's, and after each switch
    the site returns the variant switched to.  SIGKILL on hostd drives the guest to the safe
    default after the staleness bound, and it keeps running."""
    path = str(tmp_path / "hints")
    guest_src = textwrap.dedent(f"""
        import json, threading, time
        import pvpatch
        from pvpatch import _core
        values = {{}}
        for v in ("native", "pv"):
            pvpatch.runtime_patch({{"selftest": v}})
            values[v] = _core.selftest_call(0)
        assert values["native"] != values["pv"]
        bad, calls, stop = [], [0], threading.Event()
        def run():
            while not stop.is_set():
                r = _core.selftest_call(0)
                calls[0] += 1
                if r not in values.values():
                    bad.append(r)
        ts = [threading.Thread(target=run) for _ in range(3)]
        [t.start() for t in ts]
        def on_event(ev):
            got = _core.selftest_call(0)
            print(json.dumps(dict(ev.to_json(), site_value=got,
                                  expected=values[ev.variants["selftest"]])), flush=True)
        h = pvpatch.hints.auto({path!r}, groups={{"selftest": ("native", "pv")}},
                               min_dwell_s=0.1, on_event=on_event)
        print("ready", flush=True)
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline:
            if h.events and h.events[-1].reason.startswith("no hints: stale"):
                break
            time.sleep(0.02)
        stop.set(); [t.join(10) for t in ts]
        h.stop()
        print("done", json.dumps({{"bad": bad, "calls": calls[0]}}), flush=True)
        """)
    h = hostd(path, "--interval", "0.1", "--duration", "30",
              "--simulate", "0:realtime,0.8:oversubscribed,1.6:realtime")
    g = Proc([PY, "-c", "import pvpatch.hints\n" + guest_src])
    try:
        g.wait_line("ready", timeout=20)
        events = []
        for want in ("native", "pv", "native"):
            while True:
                ev = json.loads(g.wait_line('"variants"', timeout=15))
                events.append(ev)
                if ev["variants"]["selftest"] == want and ev["published_ns"]:
                    break
            assert ev["ok"] and ev["site_value"] == ev["expected"], ev
            assert ev["latency_s"] > 0
        h.kill(signal.SIGKILL)
        h.wait(10)
        ev = json.loads(g.wait_line('"variants"', timeout=15))
        assert ev["variants"] == {"selftest": "pv"} and ev["reason"].startswith("no hints: stale")
        assert ev["latency_s"] is None and ev["site_value"] == ev["expected"]
        done = json.loads(g.wait_line("done", timeout=20).split(" ", 1)[1])
        assert done["bad"] == [] and done["calls"] > 0
        assert g.wait(10) == 0
    finally:
        g.close()
        h.close()


def test_latency_measurement_runs(tmp_path):
    """Behaviour, not speed: every flip is measured and the percentiles are ordered."""
    r = latency.measure(samples=20, spacing_s=0.01, mode="notify")
    assert r["measured"] >= 15 and r["errors"] == []
    assert 0 < r["min_us"] <= r["p50_us"] <= r["p99_us"] <= r["max_us"]
    # (spaced so that a loaded machine does not coalesce flips: coalesced ones are not counted)
    r = latency.measure(samples=10, spacing_s=0.1, mode="switch", group="selftest")
    assert r["measured"] >= 7 and r["errors"] == [] and r["p50_us"] <= r["p99_us"]
    assert r["command"].startswith("python -m pvpatch.hints.latency")


def test_stopped_publisher_sends_guests_to_the_safe_default_at_once(tmp_path, selftest_native):
    path = str(tmp_path / "hints")
    pub = Publisher(path, interval_s=10.0).open()  # long interval: staleness would take 30 s
    pub.publish(abi.HINT_REALTIME, M, abi.REASON_SIMULATED)
    handle = auto(path, groups=SELFTEST, min_dwell_s=0)
    try:
        assert handle.wait_events(1, 10) and handle.events[0].variants == {"selftest": "native"}
        pub.close()  # marks the page stopped and wakes
        assert handle.wait_events(2, 5)
        e = handle.events[1]
        assert e.variants == {"selftest": "pv"} and "stopped" in e.reason
        assert e.latency_s is not None  # the stop was a publication
    finally:
        handle.stop()
        pub.close()


def test_stop_from_a_callback_on_the_agent_thread(tmp_path):
    """on_event runs on the agent's own thread; stopping the handle from there must neither
    hang (a thread cannot join itself) nor call back into the stopped handle afterwards."""
    stopped = threading.Event()
    box = []

    def on_event(ev):
        box[0].stop()
        stopped.set()
    box.append(auto(str(tmp_path / "absent"), groups={"lock": ("native", "pv")},
                    patch=lambda changes: None, on_event=on_event, poll_s=0.01))
    handle = box[0]
    assert stopped.wait(10), "on_event never ran"
    assert not handle.alive and handle.stopped
    n = handle.agent.observations
    time.sleep(0.2)  # 20 poll periods: a live agent would have observed the page again
    assert handle.agent.observations == n and len(handle.events) == 1
