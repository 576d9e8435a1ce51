"""The guest agent never gives up silently: refused switches are retried, unexpected exceptions
are caught, reported and survived, bad arguments start nothing, latency is measured from the
publication that caused the switch, and it exports metrics."""
from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import textwrap
import threading
import time
import urllib.request

import pytest

import pvpatch
from pvpatch.errors import RegistryError
from pvpatch.hints import abi, shm
from pvpatch.hints.guest import AutoError, auto
from pvpatch.hints.metrics import MetricsServer
from pvpatch.hints.publisher import Publisher

from hints_util import PY, cli, wait_until

SELFTEST = {"selftest": ("native", "pv")}
M = {"online_cpus": 2, "runnable": 0}


@pytest.fixture
def page(tmp_path):
    pub = Publisher(str(tmp_path / "hints"), interval_s=10.0).open()  # stale only after 30 s
    yield pub
    pub.close()


def _wake(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        m = shm.Mapping(fd, abi.FILE_SIZE, writable=False)
        shm.futex_wake(m.generation_addr)
        m.close()
    finally:
        os.close(fd)


def test_refused_switch_is_retried_until_it_succeeds(page, selftest_native):
    """A foreign int3 in a site (a debugger's breakpoint) makes runtime_patch refuse (for real).
    The agent retries with backoff while the hints stay the same, each retry an event, and
    switches as soon as the int3 is gone."""
    from pvpatch import _core
    page.publish(0, M, abi.REASON_RUNNABLE)
    handle = auto(page.path, groups=SELFTEST, min_dwell_s=0, metrics_textfile=None)
    site = pvpatch.registry.sites("selftest")[0]
    first = b""
    try:
        wait_until(lambda: handle.in_force == {"selftest": "pv"}, 10, "pv")
        first = _core.read(site.addr, 1)
        _core.write_code(site.addr, b"\xcc")  # no thread runs this site meanwhile
        n0 = len(handle.events)
        page.publish(abi.HINT_REALTIME, M, abi.REASON_SIMULATED)  # one publication, no more
        wait_until(lambda: len([e for e in handle.events[n0:] if not e.ok]) >= 3, 15,
                   "three refused attempts")
        assert pvpatch.current()["selftest"] == "pv" and not handle.settled
        _core.write_code(site.addr, first)
        first = b""
        wait_until(lambda: handle.in_force == {"selftest": "native"}, 15, "the retry succeeding")
        evs = handle.events[n0:]
        assert [e.ok for e in evs][-1] and not any(e.ok for e in evs[:-1])
        assert [e.attempt for e in evs] == list(range(1, len(evs) + 1))  # each retry visible
        assert all("not the expected old bytes" in e.error for e in evs[:-1])
        assert len({e.generation for e in evs}) == 1  # the hints never changed meanwhile
        assert handle.worker.retries == len(evs) - 1 and handle.settled
        assert pvpatch.current()["selftest"] == "native"
    finally:
        if first:
            _core.write_code(site.addr, first)
        handle.stop()


def test_unexpected_exceptions_are_reported_and_the_agent_goes_on(page, tmp_path,
                                                                  selftest_native):
    """A ProcessLookupError out of the patch call (as under thread churn) and a SystemExit out
    of a callback: each is caught, counted, reported (errors, on_error, the event, metrics),
    the worker loop is restarted and the switch completed."""
    faults = ["ProcessLookupError"]
    errors = []

    def patch(changes):
        if faults and faults[0] == "ProcessLookupError":
            faults.pop(0)
            raise ProcessLookupError(3, "No such process")
        return pvpatch.runtime_patch(changes)
    exits = [1]

    def on_event(ev):
        if exits and ev.ok:
            exits.pop()
            raise SystemExit("callback called sys.exit()")
    page.publish(abi.HINT_REALTIME, M, abi.REASON_SIMULATED)
    prom = tmp_path / "guest.prom"
    handle = auto(page.path, groups=SELFTEST, min_dwell_s=0, patch=patch, on_event=on_event,
                  on_error=errors.append, metrics_port=0, metrics_textfile=str(prom))
    try:
        wait_until(lambda: handle.in_force == {"selftest": "native"} and len(errors) >= 2,
                   15, "the switch and two reports")  # on_error runs last of the reports
        first = handle.events[0]
        assert not first.ok and "unexpected ProcessLookupError" in first.error
        kinds = [(e.component, e.error.split(":")[0], e.action) for e in handle.errors]
        assert kinds[0] == ("worker", "ProcessLookupError", "switch to {'selftest': 'native'} "
                                                            "retried")
        assert kinds[1] == ("worker", "SystemExit", "loop restarted")
        assert [e.error for e in errors] == [e.error for e in handle.errors]
        assert handle.alive and handle.worker.restarts == 1
        # Still following hints after the restart.
        page.publish(0, M, abi.REASON_RUNNABLE)
        wait_until(lambda: handle.in_force == {"selftest": "pv"}, 10, "pv after the restart")
        # The worker updates the metrics right after the switch: wait for that, not for time.
        wait_until(lambda: "pvpatch_guest_switches_total 2.0" in prom.read_text(), 10,
                   "the second switch in the textfile")
        text = urllib.request.urlopen(handle.metrics_url, timeout=5).read().decode()
        assert 'pvpatch_guest_errors_total{component="worker"} 2.0' in text
        assert "pvpatch_guest_switch_refusals_total 1.0" in text
        # ... and `pvpatch hints --guest` shows them, from the guest's textfile.
        r = cli("hints", "--hints-path", page.path, "--guest", prom)
        line = r.stdout.splitlines()[-1]
        assert r.returncode == 0 and line.startswith(f"guest {prom}: page usable"), r.stdout
        assert "in force selftest=pv" in line and "1 refused, 1 retries" in line, line
        assert "unexpected errors: worker 2" in line, line
    finally:
        handle.stop()


@pytest.mark.parametrize("kw,frag", [
    ({"hints_path": 12345}, "hints_path 12345"),
    ({"hints_path": ""}, "hints_path ''"),
    ({"min_dwell_s": math.nan}, "min_dwell_s nan"),
    ({"min_dwell_s": -1}, "min_dwell_s -1"),
    ({"native_settle_s": math.inf}, "native_settle_s inf"),
    ({"poll_s": 0}, "poll_s 0"),
    ({"groups": {"selftest": "pv"}}, "'selftest'"),
    ({"groups": {"selftest": ("pv", "pv")}}, "'selftest'"),
    ({"groups": []}, "groups []"),
    ({"patch": 3}, "patch 3"),
    ({"on_event": "x"}, "on_event 'x'"),
    ({"publisher_uid": -1}, "publisher_uid -1"),
    ({"metrics_port": 70000}, "metrics_port 70000"),
    ({"metrics_textfile": "/tmp/metrics.txt"}, ".prom"),
    ({"metrics_textfile": "/no/such/dir/x.prom"}, "/no/such/dir"),
])
def test_bad_arguments_raise_at_once_and_start_nothing(tmp_path, kw, frag):
    before = set(threading.enumerate())
    kw.setdefault("hints_path", str(tmp_path / "h"))
    if "groups" not in kw:
        kw["groups"] = SELFTEST
    path = kw.pop("hints_path")
    with pytest.raises(AutoError, match=frag.replace("(", r"\(").replace("[", r"\[")):
        auto(path, **kw)
    assert set(threading.enumerate()) == before
    with pytest.raises(RegistryError):
        auto(str(tmp_path / "h"), groups={"selftest": ("native", "warp")})
    assert set(threading.enumerate()) == before


CHILD = textwrap.dedent("""
    import resource, sys, threading
    from pvpatch.hints.guest import AutoError, auto
    allowed = int(sys.argv[1])
    STACK = 256 << 20
    threading.stack_size(STACK)
    before = set(threading.enumerate())
    def vm():
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    # Room for `allowed` thread stacks and some heap, not for one more stack.
    limit = vm() + allowed * (STACK + (8 << 20)) + (96 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
    try:
        h = auto(sys.argv[2], groups={"selftest": ("native", "pv")}, patch=lambda c: None)
    except AutoError as e:
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        left = set(threading.enumerate()) - before
        print("refused", "left:", sorted(t.name for t in left), str(e)[:200], flush=True)
    else:
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        h.stop()
        print("started", flush=True)
    """)


def test_a_thread_that_cannot_be_created_leaves_no_thread_behind(tmp_path):
    """A real thread-creation failure (address-space limit: no room for the agent's thread,
    created with Python's threading.stack_size()): AutoError, and nothing is left running.
    With room for one thread the same start succeeds, so the limit was the cause."""
    r = subprocess.run([PY, "-c", CHILD, "0", str(tmp_path / "h")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("refused left: [] "), (r.stdout, r.stderr[-2000:])
    assert "cannot start the agent's threads" in r.stdout
    r = subprocess.run([PY, "-c", CHILD, "1", str(tmp_path / "h")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("started"), (r.stdout, r.stderr[-2000:])


def test_latency_after_a_period_without_usable_hints_counts_from_the_fresh_page(
        page, selftest_native):
    """The page becomes untrusted for a while (mode 666) and trusted again; the publisher's
    hints never changed, so changed_ns is old.  The switch back is measured from the first
    fresh page the guest saw, not from that old change."""
    page.publish(abi.HINT_REALTIME, M, abi.REASON_SIMULATED)
    handle = auto(page.path, groups=SELFTEST, min_dwell_s=0)
    try:
        wait_until(lambda: handle.in_force == {"selftest": "native"}, 10, "native")
        changed = page.page.changed_ns
        os.chmod(page.path, 0o666)
        _wake(page.path)
        wait_until(lambda: handle.in_force == {"selftest": "pv"}, 10, "untrusted -> pv")
        assert "untrusted" in handle.events[-1].reason
        time.sleep(0.3)
        os.chmod(page.path, 0o644)
        fresh = time.monotonic_ns()
        assert not page.publish(abi.HINT_REALTIME, M, abi.REASON_SIMULATED)  # a heartbeat
        _wake(page.path)
        wait_until(lambda: handle.in_force == {"selftest": "native"}, 10, "native again")
        ev = handle.events[-1]
        assert ev.published_ns >= fresh > changed, (ev.published_ns, fresh, changed)
        assert ev.generation == handle.events[0].generation  # no generation change involved
    finally:
        handle.stop()


def test_stopped_publisher_resuming_moves_the_generation_and_latency_is_fresh(
        tmp_path, selftest_native):
    """A publisher that did not publish for longer than the staleness bound (SIGSTOP, here
    simply not called) moves the generation on its next publication: guests that fell back are
    woken at once and measure from that publication."""
    pub = Publisher(str(tmp_path / "hints"), interval_s=0.1).open()  # stale after 1 s
    handle = None
    try:
        pub.publish(abi.HINT_REALTIME, M, abi.REASON_SIMULATED)
        handle = auto(pub.path, groups=SELFTEST, min_dwell_s=0)
        wait_until(lambda: handle.in_force == {"selftest": "native"}, 10, "native")
        wait_until(lambda: handle.in_force == {"selftest": "pv"}, 10, "stale -> pv")
        assert "stale" in handle.events[-1].reason and handle.events[-1].latency_s is None
        fresh = time.monotonic_ns()
        assert pub.publish(abi.HINT_REALTIME, M, abi.REASON_SIMULATED)  # moved: resumed
        assert pub.repairs["resumed"] == 1
        wait_until(lambda: handle.in_force == {"selftest": "native"}, 10, "native again")
        assert handle.events[-1].published_ns >= fresh
    finally:
        if handle:
            handle.stop()
        pub.close()


def test_guest_metrics_over_http_and_in_a_textfile(page, tmp_path, selftest_native):
    prom = tmp_path / "guest.prom"
    page.publish(abi.HINT_REALTIME, M, abi.REASON_SIMULATED)
    handle = auto(page.path, groups=SELFTEST, min_dwell_s=0, metrics_port=0,
                  metrics_textfile=str(prom))
    try:
        assert handle.metrics_url.startswith("http://127.0.0.1:")
        wait_until(lambda: handle.in_force == {"selftest": "native"}, 10, "native")

        def scrape():
            return urllib.request.urlopen(handle.metrics_url, timeout=5).read().decode()
        wait_until(lambda: 'pvpatch_guest_variant{group="selftest",variant="native"} 1.0'
                   in scrape(), 10, "the variant in the metrics")
        wants = ('pvpatch_guest_variant{group="selftest",variant="pv"} 0.0',
                 "pvpatch_guest_switches_total 1.0", "pvpatch_guest_hint_page_usable 1.0",
                 'pvpatch_guest_hint_page_status{status="usable"} 1.0',
                 "pvpatch_guest_switch_retries_total 0.0",
                 "pvpatch_guest_switch_refusals_total 0.0")
        # The switch and the observation are recorded by the agent's callbacks one after the
        # other: every gauge is there within the bound, not necessarily in the first scrape.
        wait_until(lambda: all(w in scrape() for w in wants), 10, "every gauge")
        text = scrape()
        for want in wants:
            assert want in text, want
        lat = [ln for ln in text.splitlines()
               if ln.startswith("pvpatch_guest_reaction_latency_seconds ")]
        assert lat and float(lat[0].split()[1]) > 0
        names = {ln.split("{")[0].split()[0] for ln in text.splitlines()
                 if ln and not ln.startswith("#")}
        assert all(n.startswith("pvpatch_guest_") for n in names), names
        # The page turns untrusted: the status says so, in both places.
        os.chmod(page.path, 0o666)
        _wake(page.path)
        wait_until(lambda: 'pvpatch_guest_hint_page_status{status="untrusted"} 1.0'
                   in prom.read_text(), 10, "untrusted in the textfile")
        assert 'pvpatch_guest_hint_page_status{status="untrusted"} 1.0' in scrape()
        assert "pvpatch_guest_hint_page_usable 0.0" in prom.read_text()
    finally:
        handle.stop()
    assert not any(t.name.startswith("pvpatch-metrics") for t in threading.enumerate())


def test_metrics_server_threads_are_bounded(tmp_path):
    """200 idle connections: the server keeps its fixed threads, drops what it cannot queue,
    times the rest out, and answers a scrape afterwards."""
    from prometheus_client import CollectorRegistry, Gauge
    reg = CollectorRegistry()
    Gauge("pvpatch_test_value", "test", registry=reg).set(7)
    before = threading.active_count()
    srv = MetricsServer(reg, 0, workers=2, backlog=4, timeout_s=0.5)
    socks = []
    try:
        assert threading.active_count() == before + 3
        for _ in range(200):
            socks.append(socket.create_connection(("127.0.0.1", srv.port), timeout=5))
        time.sleep(0.2)
        assert threading.active_count() == before + 3
        for s in socks:  # every idle connection is closed by the server, none hangs
            s.settimeout(10)
            try:
                got = s.recv(1)
            except ConnectionResetError:
                got = b""
            assert got == b""
        wait_until(lambda: srv.server.dropped > 0, 5, "connections dropped at the queue")
        body = urllib.request.urlopen(srv.url, timeout=10).read().decode()
        assert "pvpatch_test_value 7.0" in body
        assert threading.active_count() == before + 3
    finally:
        for s in socks:
            s.close()
        srv.close()
    assert threading.active_count() == before


def test_fault_measurement_runs(selftest_native):
    """Behaviour, not speed: a clean stop makes the guest fall back and a new hostd brings it
    back; a truncated page is repaired by hostd (the guest, asleep, need not fall back)."""
    from pvpatch.hints import faults
    r = faults.measure(rounds=1, interval_s=0.1, faults=("sigterm", "truncate"))
    term, trunc = r["faults"]["sigterm"], r["faults"]["truncate"]
    assert term["fell_back"] == 1 and term["fallback"]["max_ms"] > 0
    assert term["recovery"]["max_ms"] > 0
    assert trunc["repaired"]["max_ms"] > 0 and trunc["recovery"] is not None
    assert r["command"].startswith("python -m pvpatch.hints.faults")
    with pytest.raises(pvpatch.PvpatchError, match="unknown fault"):
        faults.measure(faults=("meteor",))
