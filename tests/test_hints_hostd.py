"""`pvpatch hostd` and `pvpatch hints` as real processes."""
from __future__ import annotations

import json
import os
import signal
import time
import urllib.request

from pvpatch.hints import abi
from pvpatch.hints.reader import HintReader
from pvpatch.hints.subscriber import Notifier

from hints_util import cli, hostd, wait_until


def hints_json(path) -> dict:
    r = cli("hints", "--hints-path", path, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_simulated_flips_and_clean_stop(tmp_path):
    path = tmp_path / "hints"
    h = hostd(path, "--interval", "0.1", "--simulate", "0:realtime,0.6:oversubscribed",
              "--duration", "30")
    try:
        h.wait_line("publishing")
        for needle in ("source proc_stat", "source psi", "source cgroup", "source cpuid"):
            h.wait_line(needle)  # each reported, available or with its reason
        h.wait_line("hints=realtime reason=simulated")
        j = hints_json(path)
        for key in ("valid", "stale", "generation", "active_hints", "ever_hints", "features",
                    "measurements", "age_s"):
            assert key in j
        assert j["valid"] and not j["stale"] and j["publisher_pid"] == h.pid
        assert "simulated" in j["features"] and "dynamic_hints" in j["features"]
        assert j["measurements"]["online_cpus"] == os.cpu_count()
        g = j["generation"]
        h.wait_line("hints=none reason=simulated")
        j = hints_json(path)
        assert j["active_hints"] == [] and j["ever_hints"] == ["realtime"]
        assert j["generation"] == g + 1
        h.kill(signal.SIGTERM)
        assert h.wait(10) == 0
        h.wait_line("page marked stopped")
        j = hints_json(path)
        assert j["valid"] and j["stale"] and j["state"] == "stopped" and j["active_hints"] == []
    finally:
        h.close()


def test_sigkill_leaves_a_page_that_goes_stale(tmp_path):
    """Guests keep running and reach the safe default after the staleness bound."""
    path = str(tmp_path / "hints")
    h = hostd(path, "--interval", "0.1", "--simulate", "0:realtime")
    seen = []
    n = None
    try:
        h.wait_line("hints=realtime")
        n = Notifier(path, seen.append).start()
        wait_until(lambda: seen and seen[-1].usable and seen[-1].active_hints, 10,
                   "REALTIME in the guest")
        h.kill(signal.SIGKILL)
        h.wait(10)
        killed = time.monotonic()
        wait_until(lambda: not seen[-1].usable, 10, "the safe default after SIGKILL")
        took = time.monotonic() - killed
        assert seen[-1].stale and "stale" in seen[-1].problem
        assert took < 5  # bound: max(3 x 0.1 s, 1 s), plus scheduling slack
        assert n.alive and n.warnings == 1
    finally:
        if n:
            n.stop()
        h.close()


def test_second_hostd_refuses_naming_the_holder(tmp_path):
    path = tmp_path / "hints"
    h = hostd(path, "--interval", "0.2", "--duration", "30")
    try:
        h.wait_line("publishing")
        r = cli("hostd", "--path", path, "--duration", "1")
        assert r.returncode == 2
        assert f"pid {h.pid}" in r.stderr and str(path) in r.stderr
        # The running one is undisturbed.
        assert hints_json(path)["publisher_pid"] == h.pid
    finally:
        h.kill(signal.SIGTERM)
        h.close()
    # Once it is gone the lock is free again.
    r = cli("hostd", "--path", path, "--duration", "0.3", "--interval", "0.1")
    assert r.returncode == 0, r.stderr


def test_restarted_hostd_wakes_guests_that_keep_the_file_mapped(tmp_path):
    path = str(tmp_path / "hints")
    seen = []
    h = hostd(path, "--interval", "0.1", "--simulate", "0:realtime", "--duration", "0.5")
    try:
        h.wait_line("hints=realtime")
        n = Notifier(path, seen.append).start()
        h.wait(10)
        wait_until(lambda: seen and not seen[-1].usable, 10, "stopped page")
        fd = n.reader.fd
        h2 = hostd(path, "--interval", "0.1", "--simulate", "0:realtime", "--duration", "30")
        try:
            wait_until(lambda: seen[-1].usable and seen[-1].active_hints, 10, "hints again")
            assert n.reader.fd == fd  # same file, same mapping: reused in place
        finally:
            h2.kill(signal.SIGTERM)
            h2.close()
        n.stop()
    finally:
        h.close()


def test_bad_arguments_change_nothing(tmp_path):
    path = tmp_path / "hints"
    for args, frag in [(["--simulate", "0:fast"], "fast"),
                       (["--simulate", "x"], "'x'"),
                       (["--interval", "0"], "interval")]:
        r = cli("hostd", "--path", path, "--duration", "1", *args)
        assert r.returncode == 2 and frag in r.stderr, (args, r.stderr)
        assert not path.exists()


def test_hints_command_on_missing_and_garbage(tmp_path):
    j = hints_json(tmp_path / "none")
    assert j["valid"] is False and j["active_hints"] == [] and "missing" in j["problem"]
    (tmp_path / "junk").write_bytes(b"\xff" * 100)
    j = hints_json(tmp_path / "junk")
    assert j["valid"] is False and "magic" in j["problem"]
    r = cli("hints", "--hints-path", tmp_path / "junk")
    assert r.returncode == 0 and "safe default" in r.stdout


def test_hints_watch_prints_changes(tmp_path):
    path = tmp_path / "hints"
    h = hostd(path, "--interval", "0.1", "--simulate", "0:realtime,0.5:oversubscribed",
              "--duration", "30")
    try:
        h.wait_line("hints=realtime")
        r = cli("hints", "--hints-path", path, "--watch", "--json", "--count", "8", timeout=20)
        assert r.returncode == 0, r.stderr
        rows = [json.loads(line) for line in r.stdout.splitlines()]
        assert len(rows) == 8
        seqs = [row["seqcount"] for row in rows]
        assert seqs == sorted(seqs) and len(set(seqs)) == 8  # one row per publication
    finally:
        h.kill(signal.SIGTERM)
        h.close()


def test_metrics_endpoint(tmp_path):
    path = tmp_path / "hints"
    h = hostd(path, "--interval", "0.1", "--simulate", "0:realtime", "--metrics-port", "0",
              "--duration", "30")
    try:
        line = h.wait_line("metrics on http://127.0.0.1:")
        url = line.split("metrics on ")[1].strip()
        h.wait_line("hints=realtime")

        def scrape():
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.read().decode()
        text = scrape()
        assert 'pvpatch_hint_active{hint="realtime"} 1.0' in text
        assert "pvpatch_hints_generation" in text
        assert 'pvpatch_hints_source_available{source="proc_stat"} 1.0' in text
        assert "pvpatch_hints_online_cpus" in text

        def pubs():
            for ln in scrape().splitlines():
                if ln.startswith("pvpatch_hints_publications_total"):
                    return float(ln.split()[1])
        first = pubs()
        wait_until(lambda: pubs() > first, 10, "publications to grow")
    finally:
        h.kill(signal.SIGTERM)
        h.close()


def test_real_decision_publishes_measurements(tmp_path):
    """No --simulate: the page carries real measurements and a reason; REALTIME only once earned."""
    path = str(tmp_path / "hints")
    h = hostd(path, "--interval", "0.05", "--duration", "30")
    try:
        h.wait_line("publishing")
        with HintReader(path) as r:
            st = wait_until(lambda: (lambda s: s if s.valid and s.page.publications >= 3
                                     else None)(r.read()), 10, "three publications")
        p = st.page
        assert p.features & abi.FEATURE_MEASUREMENTS and not p.features & abi.FEATURE_SIMULATED
        assert p.online_cpus == os.cpu_count()
        assert p.sources & abi.SOURCE_PROC_STAT
        assert p.reason in (abi.REASON_NONE, abi.REASON_UNDERSUBSCRIBED, abi.REASON_RUNNABLE,
                            abi.REASON_STEAL, abi.REASON_PSI, abi.REASON_THROTTLED)
        assert bool(p.active_hints) == (p.reason == abi.REASON_UNDERSUBSCRIBED)
    finally:
        h.kill(signal.SIGTERM)
        h.close()
