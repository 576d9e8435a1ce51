"""`pvpatch torture`: the engine against every lock kind, the report, the watchdog, the CLI.

CLI runs go through a subprocess with a timeout, so that a hang is a failed test, not a hung
suite; the engine's own waits are bounded as well (writers are joined with a deadline).
"""
import json
import re
import subprocess
import sys
import time

import pytest

import pvpatch
from pvpatch import _core, torture

LINE = re.compile(r"^pvpatch-torture: Writes:  Total: (\d+)  Max/Min: (\d+)/(\d+)  Fail: (\d+)"
                  r"( \?\?\?)?( !!!)?$")


def cli(*args, timeout=60):
    p = subprocess.run([sys.executable, "-m", "pvpatch.cli", "torture", *args],
                       capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


# ---- one suite, every lock kind -----------------------------------------------------------

@pytest.mark.parametrize("kind", torture.KINDS)
def test_every_lock_kind_is_exclusive_under_oversubscription(kind):
    h = _core.torture_start(6, 100, kind)
    time.sleep(0.4)
    res = _core.torture_stop(h, 10.0)
    writes, fails = _core.torture_read(h)
    assert res["joined"] and res["stuck"] == []
    assert sum(fails) == 0
    assert res["kinds"] == {kind: (sum(writes), sum(writes))}  # no lost update
    assert sum(writes) > 0


def test_the_detector_sees_violations_without_a_lock():
    """Kind `none` takes no lock: the critical-section checks must notice, or a clean run of
    the other kinds would prove nothing."""
    h = _core.torture_start(6, 2000, "none")
    time.sleep(0.3)
    res = _core.torture_stop(h, 10.0)
    writes, fails = _core.torture_read(h)
    w, counter = res["kinds"]["none"]
    assert sum(fails) > 0 or counter < w


def test_writers_move_between_kinds_without_false_failures():
    h = _core.torture_start(6, 0, "pvpatch")
    for kind in list(torture.KINDS) * 3:
        _core.torture_set_kind(h, kind)
        time.sleep(0.02)
    res = _core.torture_stop(h, 10.0)
    writes, fails = _core.torture_read(h)
    assert res["joined"] and sum(fails) == 0
    assert all(w == c for w, c in res["kinds"].values())
    assert sum(w for w, _ in res["kinds"].values()) == sum(writes)


# ---- the report ---------------------------------------------------------------------------

@pytest.mark.parametrize("total,mx,mn,fail,suffix", [
    (100, 50, 50, 0, ""), (100, 90, 10, 0, " ???"), (100, 50, 25, 0, ""),
    (100, 50, 50, 2, " !!!"), (100, 90, 10, 1, " ??? !!!")])
def test_line_format_is_locktorture_s(total, mx, mn, fail, suffix):
    line = torture.format_line(total, mx, mn, fail)
    assert line == (f"pvpatch-torture: Writes:  Total: {total}  Max/Min: {mx}/{mn}  "
                    f"Fail: {fail}{suffix}")
    assert LINE.match(line)


def test_toggle_run_reports_in_locktorture_format_with_json_and_plot(tmp_path):
    js, png = tmp_path / "t.json", tmp_path / "t.png"
    rc, out, err = cli("--writers", "8", "--mode", "toggle", "--toggle-every", "0.05",
                       "--duration", "2", "--stat-interval", "0.4", "--hold-ns", "200",
                       "--pv-spin", "8", "--json", str(js), "--plot", str(png))
    assert rc == 0, out + err
    lines = out.splitlines()
    stats = [ln for ln in lines if ln.startswith("pvpatch-torture:")]
    assert len(stats) >= 4 and all(LINE.match(ln) for ln in stats), stats
    assert all(LINE.match(ln).group(4) == "0" for ln in stats)
    assert "# toggle pv" in lines and "# toggle native" in lines
    assert lines[-1] == "End of test: SUCCESS"

    doc = json.loads(js.read_text())
    assert doc["config"]["writers"] == 8 and doc["config"]["mode"] == "toggle"
    assert {"t", "total", "max", "min", "fail", "mode"} <= set(doc["intervals"][0])
    s = doc["summary"]
    assert s["fail"] == 0 and s["lost_wakeups"] == 0 and s["success"] is True
    assert s["switches"] >= 20
    assert s["total"] >= doc["intervals"][-1]["total"]
    assert set(s["rates"]) == {"pvpatch native", "pvpatch pv"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_side_by_side_locks_in_one_run(tmp_path):
    js = tmp_path / "s.json"
    rc, out, err = cli("--writers", "4", "--lock", "pvpatch,pthread-mutex,ticket", "--mode",
                       "pv", "--toggle-every", "0.2", "--duration", "1.5", "--json", str(js))
    assert rc == 0, out + err
    assert "# lock pthread-mutex" in out and "# lock ticket" in out
    rates = json.loads(js.read_text())["summary"]["rates"]
    assert set(rates) == {"pvpatch pv", "pthread-mutex", "ticket"}
    assert re.search(r"^# ratio pthread-mutex / pvpatch pv: [\d.]+$", out, re.M)


def test_a_stall_is_a_failure_with_a_state_dump_not_a_hang():
    # One writer parks in a 1.5 s critical section; nobody acquires for longer than 0.5 s.
    rc, out, err = cli("--writers", "2", "--mode", "native", "--hold-ns", "1500000000",
                       "--duration", "5", "--stall-timeout", "0.5", timeout=60)
    assert rc == 1, out + err
    assert "# state dump: no acquisition for" in out
    assert re.search(r"^#   writer \d: cs \(pvpatch\)", out, re.M)
    assert "#   lock word 0x" in out
    assert "# FAILURE: stall" in out and out.splitlines()[-1] == "End of test: FAILURE"


@pytest.mark.parametrize("args,message", [
    (["--mode", "bogus"], "--mode 'bogus': must be one of native, pv, auto, toggle"),
    (["--lock", "bakery"], "--lock 'bakery': must be one of pvpatch"),
    (["--lock", "tas,tas"], "a lock is named twice"),
    (["--writers", "-3"], "--writers -3"),
    (["--duration", "0"], "--duration 0"),
    (["--toggle-every", "-1"], "--toggle-every -1"),
    (["--plot", "x.svg"], "--plot x.svg: give a .png file name"),
    (["--json", "/nonexistent/dir/x.json"], "directory /nonexistent/dir does not exist"),
    (["--mode", "auto", "--lock", "pvpatch,tas"], "cannot rotate through several locks"),
])
def test_bad_options_are_refused_by_name(args, message):
    rc, out, err = cli(*args, "--duration", "0.2") if "--duration" not in args else cli(*args)
    assert rc == 2, out + err
    assert message in err


def test_auto_mode_follows_host_hints(tmp_path):
    """--mode auto hands the variant to pvpatch.auto(); without a hint page that is the safe
    default, pv.  The run must stay correct and report the switch it saw."""
    rc, out, err = cli("--writers", "4", "--mode", "auto", "--duration", "3",
                       "--hints-path", str(tmp_path / "no-such-page"))
    assert rc == 0, out + err
    assert out.splitlines()[-1] == "End of test: SUCCESS"
    assert "# toggle pv" in out


# ---- progress gaps ------------------------------------------------------------------------

def test_progress_gaps_report_one_writer_stalled_for_longer_than_100x_its_latency():
    g = torture.ProgressGaps(2, 0.0)
    counts = [0, 0]
    t = 0.0
    for k in range(300):                       # 3 s sampled every 10 ms
        t = round(t + 0.01, 3)
        counts[0] += 10                        # 1 ms per acquisition, throughout
        if not 1.0 <= t < 2.5:                 # writer 1 stalls from 1.0 s to 2.5 s
            counts[1] += 10
        g.sample(t, list(counts))
    gaps = g.gaps()
    assert [x.writer for x in gaps] == [1]
    assert gaps[0].t0 == pytest.approx(0.99, abs=0.011)
    assert 1.49 <= gaps[0].seconds <= 1.51     # a lower bound: the samples that saw nothing
    assert gaps[0].median_latency_s == pytest.approx(0.001)


def test_progress_gaps_count_a_writer_stalled_until_the_end():
    g = torture.ProgressGaps(1, 0.0)
    g.sample(0.01, [100])
    for k in range(2, 50):
        g.sample(k / 100, [100])
    (gap,) = g.gaps()
    assert gap.writer == 0 and gap.seconds == pytest.approx(0.48)


def test_progress_gaps_are_in_the_report_and_the_json(tmp_path):
    path = tmp_path / "t.json"
    rc, out, err = cli("--writers", "2", "--mode", "pv", "--duration", "1", "--json",
                       str(path))
    assert rc == 0, out + err
    summary = json.loads(path.read_text())["summary"]
    total = summary["progress_gaps_total"]
    assert isinstance(total, int) and len(summary["progress_gaps"]) == min(total, 20)
    for gap in summary["progress_gaps"]:
        assert gap["seconds"] > max(100 * gap["median_latency_s"], torture.GAP_SAMPLE_S)
    line = re.search(r"^# progress gaps longer than 100x .*: (\d+)$", out, re.M)
    assert (int(line.group(1)) if line else 0) == total
