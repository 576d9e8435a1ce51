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

from hints_util import PY, Proc, cli, hostd, wait_until


def hints_json(path, rc: int = 0) -> dict:
    """`pvpatch hints --json`; rc 0 when the page is usable, 1 when not."""
    r = cli("hints", "--hints-path", path, "--json")
    assert r.returncode == rc, (r.returncode, r.stdout, r.stderr)
    return json.loads(r.stdout)


def test_simulated_flips_and_clean_stop(tmp_path):
    path = tmp_path / "hints"
    h = hostd(path, "--interval", "0.1", "--simulate", "0:realtime,2:oversubscribed",
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
        j = hints_json(path, rc=1)
        assert j["valid"] and j["stale"] and j["state"] == "stopped" and j["active_hints"] == []
        assert j["status"] == "stopped"
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
    """Not usable -> exit 1 and the reason, in JSON and in the one-line summary."""
    j = hints_json(tmp_path / "none", rc=1)
    assert j["valid"] is False and j["active_hints"] == [] and "missing" in j["problem"]
    assert j["status"] == "missing"
    (tmp_path / "junk").write_bytes(b"\xff" * 100)
    j = hints_json(tmp_path / "junk", rc=1)
    assert j["valid"] is False and "magic" in j["problem"] and j["status"] == "invalid"
    r = cli("hints", "--hints-path", tmp_path / "junk")
    assert r.returncode == 1 and "safe default" in r.stdout


def test_hints_watch_prints_changes_only(tmp_path):
    """Heartbeats every 0.05 s are not changes: --watch prints one line per change of the page
    (appearing, each generation, stopping), and --every adds heartbeat lines."""
    path = tmp_path / "hints"
    w = Proc([PY, "-m", "pvpatch.cli", "hints", "--hints-path", str(path), "--watch", "--json",
              "--poll", "0.05"])
    h = None
    try:
        # The page must be missing when the watcher first looks: start hostd only after that.
        w.wait_line('"status": "missing"')
        h = hostd(path, "--interval", "0.05", "--duration", "2.4",
                  "--simulate", "0:realtime,0.8:oversubscribed,1.6:realtime")
        h.wait_line("page marked stopped", timeout=20)
        w.wait_line('"status": "stopped"', timeout=10)
        rows = [json.loads(line) for line in w.history]
        assert all(row["event"] == "change" for row in rows)
        gens = [row["generation"] for row in rows if row["generation"] is not None]
        assert gens == sorted(gens) and len(set(gens)) == len(gens), gens  # no repeats
        keys = [(row["status"], row["generation"], row["active_hints"]) for row in rows]
        assert all(a != b for a, b in zip(keys, keys[1:])), keys  # each line a change
        assert ("usable", gens[-2], ["realtime"]) in keys, keys  # the last flip, seen
        # ~48 publications; at most: missing, 4 generations (a new page shows generation 1,
        # no hints, until its first publication), stopped
        assert len(rows) <= 6, rows
    finally:
        w.close()
        if h is not None:
            h.close()
    h = hostd(path, "--interval", "0.05", "--simulate", "0:realtime", "--duration", "30")
    try:
        h.wait_line("hints=realtime")
        r = cli("hints", "--hints-path", path, "--watch", "--count", "3", "--every", "0.2",
                timeout=20)
        lines = r.stdout.splitlines()
        assert r.returncode == 0 and len(lines) == 3, r.stdout
        assert "heartbeat" not in lines[0] and "usable: hints realtime" in lines[0]
        assert all("heartbeat usable: hints realtime" in ln for ln in lines[1:]), lines
    finally:
        h.kill(signal.SIGTERM)
        h.close()


def test_metrics_endpoint(tmp_path):
    path = tmp_path / "hints"
    h = hostd(path, "--interval", "0.1", "--simulate", "0:realtime", "--metrics-port", "0",
              "--duration", "30")
    try:
        line = h.wait_line("metrics on http://127.0.0.1:")  # loopback unless told otherwise
        url = line.split("metrics on ")[1].strip()
        h.wait_line("hints=realtime")

        def scrape():
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.read().decode()
        text = scrape()
        assert 'pvpatch_hostd_hint_active{hint="realtime"} 1.0' in text
        assert "pvpatch_hostd_generation" in text
        assert 'pvpatch_hostd_source_available{source="proc_stat"} 1.0' in text
        assert f"pvpatch_hostd_online_cpus {float(os.cpu_count())}" in text
        names = {ln.split("{")[0].split()[0] for ln in text.splitlines()
                 if ln and not ln.startswith("#")}
        assert all(n.startswith("pvpatch_hostd_") for n in names), names  # one prefix
        for ln in text.splitlines():  # ratios in 0..1 (or NaN: not measured yet)
            if ln.split(" ")[0].endswith("_ratio"):
                v = float(ln.split()[1])
                assert v != v or 0.0 <= v <= 1.0, ln

        def pubs():
            for ln in scrape().splitlines():
                if ln.startswith("pvpatch_hostd_publications_total"):
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
