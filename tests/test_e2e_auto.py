"""End to end, real processes: hostd publishes, a guest running `pvpatch torture --mode auto`
switches its lock variant after each flip, and measures publication to switch complete."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

PV = [sys.executable, "-m", "pvpatch.cli"]


def start_hostd(path, *extra):
    proc = subprocess.Popen(PV + ["hostd", "--path", str(path), "--interval", "0.2", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 20
    while not os.path.exists(path) or os.path.getsize(path) == 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"hostd did not start: {proc.communicate(timeout=5)[0]}")
        time.sleep(0.05)
    return proc


def run_guest(path, out, duration, writers):
    return subprocess.run(PV + ["torture", "--mode", "auto", "--hints-path", str(path),
                                "--writers", str(writers), "--duration", str(duration),
                                "--stat-interval", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=duration + 60)


def test_guest_follows_each_flip(tmp_path):
    page, out = tmp_path / "hints", tmp_path / "guest.json"
    hostd = start_hostd(page, "--simulate", "0:realtime,3:oversubscribed,6:realtime",
                        "--duration", "11")
    try:
        # One writer: the lock is never contended, so the local judge (the lock statistics) has
        # no objection to native and the page alone decides each flip.
        guest = run_guest(page, out, 9, writers=1)
    finally:
        hostd.send_signal(signal.SIGTERM)
        hostd.wait(20)
    assert guest.returncode == 0, guest.stdout + guest.stderr
    assert "End of test: SUCCESS" in guest.stdout
    res = json.load(open(out))["summary"]
    assert res["fail"] == 0 and res["lost_wakeups"] == 0
    switches = [e for e in res["auto_switches"] if e["ok"]]
    variants = [e["variants"]["lock"] for e in switches]
    # realtime -> native (initial), oversubscribed -> pv, realtime -> native
    assert variants[-2:] == ["pv", "native"], variants
    for e in switches[-2:]:
        assert e["latency_s"] is not None and e["latency_s"] > 0
        assert e["published_ns"] <= e["seen_ns"] <= e["done_ns"]
    assert "# toggle pv" in guest.stdout and "# toggle native" in guest.stdout
    assert "publication to switch complete" in guest.stdout


def test_killed_hostd_leaves_the_guest_running_and_safe(tmp_path):
    page, out = tmp_path / "hints", tmp_path / "guest.json"
    hostd = start_hostd(page, "--simulate", "0:realtime")
    guest = subprocess.Popen(PV + ["torture", "--mode", "auto", "--hints-path", str(page),
                                   "--writers", "4", "--duration", "7", "--stat-interval", "1",
                                   "--json", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.5)
        hostd.send_signal(signal.SIGKILL)
        hostd.wait(10)
        stdout, stderr = guest.communicate(timeout=90)
    finally:
        for p in (hostd, guest):
            if p.poll() is None:
                p.kill()
                p.wait(10)
    assert guest.returncode == 0, stdout + stderr
    res = json.load(open(out))["summary"]
    variants = [e["variants"]["lock"] for e in res["auto_switches"] if e["ok"]]
    assert variants[0] == "native" and variants[-1] == "pv", variants  # stale -> safe default
    assert res["fail"] == 0 and "End of test: SUCCESS" in stdout


def test_lock_statistics_veto_native_when_writers_contend(tmp_path):
    """REALTIME asks for native; four writers on this machine's CPUs contend for the lock, and
    the local judge (docs/locks.md) vetoes native after its hold: auto ends at pv, and says
    why."""
    page, out = tmp_path / "hints", tmp_path / "guest.json"
    hostd = start_hostd(page, "--simulate", "0:realtime")
    try:
        guest = run_guest(page, out, 6, writers=max(4, 2 * os.cpu_count()))
    finally:
        hostd.send_signal(signal.SIGTERM)
        hostd.wait(20)
    assert guest.returncode == 0, guest.stdout + guest.stderr
    res = json.load(open(out))["summary"]
    assert res["fail"] == 0 and res["lost_wakeups"] == 0
    final = res["auto_final"]
    assert final["page"] == "usable", final
    assert final["judge"] == 0 and final["judge_why"], final
    variants = [e["variants"]["lock"] for e in res["auto_switches"] if e["ok"]]
    assert variants[-1] == "pv", (variants, final)
