"""`pvpatch torture`: the engine against every lock kind, the report, the watchdog, the CLI.

CLI runs go through a subprocess with a timeout, so that a hang is a failed test, not a hung
suite; the engine's own waits are bounded as well (writers are joined with a deadline).
"""
import json
import os
import re
import subprocess
import sys
import time

import pytest

import pvpatch
from pvpatch import _core, torture

# The kernel's statistics line, as kernel/locking/locktorture.c prints it in
# __torture_print_stats(): sprintf(page, FORMAT, write ? "Writes" : "Reads ", sum, max, min,
# max / 2 > min ? "???" : "", fail, fail ? "!!!" : ""), after "<type>-torture: " (the prefix
# Documentation/locking/locktorture.rst shows).  Copied here, not imported, so that the test
# compares with the kernel and not with itself.
KERNEL_FORMAT = "%s:  Total: %lld  Max/Min: %ld/%ld %s  Fail: %d %s"
# lock_torture_print_module_parms(): pr_alert("%s" TORTURE_FLAG "--- %s%s: <name>=%d ...", ...)
END = re.compile(r"^(?P<type>[\w,-]+)-torture:--- End of test: (?P<verdict>SUCCESS|FAILURE): "
                 r"(?P<params>(\w+=\S+)( \w+=\S+)*)$")
LINE = re.compile(r"^(?P<lock>[\w-]+)-torture: Writes:  Total: (\d+)  Max/Min: (\d+)/(\d+) "
                  r"(\?\?\?|)  Fail: (\d+) (!!!|)$")


def c_sprintf(fmt: str, *args) -> list[tuple[str, str]]:
    """The kernel's format applied as C's sprintf would, as (literal, field) pairs: the
    literal text before each conversion and the conversion's output."""
    parts = re.split(r"(%(?:lld|ld|d|s))", fmt)
    out, it = [], iter(args)
    for lit, conv in zip(parts[0::2], parts[1::2] + [None]):
        if conv is None:
            out.append((lit, ""))
            break
        v = next(it)
        out.append((lit, str(int(v)) if conv != "%s" else v))
    return out


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

@pytest.mark.parametrize("total,mx,mn,fail", [
    (100, 50, 50, 0), (100, 90, 10, 0), (100, 50, 25, 0), (100, 51, 25, 0), (100, 3, 1, 0),
    (100, 50, 50, 2), (100, 90, 10, 1), (0, 0, 0, 0), (2**40, 2**39, 2**38 - 1, 7)])
@pytest.mark.parametrize("lock", ["pvpatch", "pthread-mutex"])
def test_line_format_is_locktorture_s_field_by_field(total, mx, mn, fail, lock):
    assert torture.KERNEL_STATS_FORMAT == KERNEL_FORMAT
    line = torture.format_line(total, mx, mn, fail, lock=lock)
    prefix = f"{lock}-torture: "
    assert line.startswith(prefix)
    rest = line[len(prefix):]
    # C's long division: 3 / 2 == 1, so 3/1 is not starved; 51 / 2 == 25 > 25 is false.
    starved = "???" if mx // 2 > mn else ""
    for lit, field in c_sprintf(KERNEL_FORMAT, "Writes", total, mx, mn, starved, fail,
                                "!!!" if fail else ""):
        assert rest.startswith(lit), (rest, lit)
        rest = rest[len(lit):]
        assert rest.startswith(field), (rest, field)
        rest = rest[len(field):]
    assert rest == ""
    assert LINE.match(line)


def test_toggle_run_reports_in_locktorture_format_with_json_and_plot(tmp_path):
    js, png = tmp_path / "t.json", tmp_path / "t.png"
    rc, out, err = cli("--writers", "8", "--mode", "toggle", "--toggle-every", "0.05",
                       "--duration", "2", "--stat-interval", "0.4", "--hold-ns", "200",
                       "--pv-spin", "8", "--json", str(js), "--plot", str(png))
    assert rc == 0, out + err
    lines = out.splitlines()
    stats = [ln for ln in lines if ln.startswith("pvpatch-torture: ")]
    assert len(stats) >= 4 and all(LINE.match(ln) for ln in stats), stats
    assert all(LINE.match(ln).group(6) == "0" for ln in stats)
    assert "# toggle pv" in lines and "# toggle native" in lines
    end = END.match(lines[-1])
    assert end and end["type"] == "pvpatch" and end["verdict"] == "SUCCESS", lines[-1]
    params = dict(kv.split("=") for kv in end["params"].split())
    assert params["nwriters_stress"] == "8" and params["mode"] == "toggle"
    assert lines[1] == lines[-1].replace("End of test: SUCCESS", "Start of test")
    ratios = [ln for ln in lines if ln.startswith("# ratio")]
    assert len(ratios) == 1 and ratios[0].startswith("# ratio pvpatch pv / pvpatch native: ")

    doc = json.loads(js.read_text())
    assert doc["config"]["writers"] == 8 and doc["config"]["mode"] == "toggle"
    assert {"t", "total", "max", "min", "fail", "mode"} <= set(doc["intervals"][0])
    s = doc["summary"]
    assert s["fail"] == 0 and s["lost_wakeups"] == 0 and s["success"] is True
    assert s["switches"] >= 20
    assert s["total"] >= doc["intervals"][-1]["total"]
    assert set(s["rates"]) == {"pvpatch native", "pvpatch pv"}
    (pair, r), = s["ratios"].items()  # 8 writers on fewer CPUs: pv / native, as the README
    if (os.cpu_count() or 1) < 8:
        assert pair == "pvpatch pv / pvpatch native"
    assert r == pytest.approx(s["rates"]["pvpatch pv"] / s["rates"]["pvpatch native"])
    assert doc["schema"] == 1
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_side_by_side_locks_in_one_run(tmp_path):
    js, svg = tmp_path / "s.json", tmp_path / "s.svg"
    rc, out, err = cli("--writers", "4", "--lock", "pvpatch,pthread-mutex,ticket", "--mode",
                       "pv", "--toggle-every", "0.2", "--duration", "1.5", "--stat-interval",
                       "0.5", "--json", str(js), "--plot", str(svg))
    assert rc == 0, out + err
    assert "# lock pthread-mutex" in out and "# lock ticket" in out
    doc = json.loads(js.read_text())
    rates, ratios = doc["summary"]["rates"], doc["summary"]["ratios"]
    assert set(rates) == {"pvpatch pv", "pthread-mutex", "ticket"}
    # Each ratio once, pvpatch first: the README's direction.
    assert set(ratios) == {"pvpatch pv / pthread-mutex", "pvpatch pv / ticket",
                           "pthread-mutex / ticket"}
    printed = re.findall(r"^# ratio (.+): ([\d.,]+)x$", out, re.M)
    assert {p for p, _ in printed} == set(ratios) and len(printed) == len(ratios)
    # Per-lock statistics: every interval has one line per lock, and each lock's counts are its
    # own (they add up to no more than all writes, and each grows only while it runs).
    by_lock = {}
    for ln in out.splitlines():
        m = LINE.match(ln)
        if m:
            by_lock.setdefault(m["lock"], []).append(int(m.group(2)))
    assert set(by_lock) == {"pvpatch", "pthread-mutex", "ticket"}
    assert len({len(v) for v in by_lock.values()}) == 1
    assert all(v[-1] > 0 and v == sorted(v) for v in by_lock.values()), by_lock
    last = {i["lock"]: i for i in doc["intervals"]}
    assert sum(i["total"] for i in last.values()) <= doc["summary"]["total"]
    assert {k: v[-1] for k, v in by_lock.items()} == {k: i["total"] for k, i in last.items()}
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    assert "lock pvpatch, pthread-mutex, ticket, mode pv" in text  # the title, as text


def test_quiet_drops_the_switch_lines_not_the_count():
    rc, out, err = cli("--writers", "2", "--mode", "toggle", "--toggle-every", "0.05",
                       "--duration", "1", "--quiet")
    assert rc == 0, out + err
    assert "# toggle" not in out
    assert re.search(r"^# switches: \d+ completed", out, re.M)


def test_a_stall_is_a_failure_with_a_state_dump_not_a_hang():
    # One writer parks in a 1.5 s critical section; nobody acquires for longer than 0.5 s.
    rc, out, err = cli("--writers", "2", "--mode", "native", "--hold-ns", "1500000000",
                       "--duration", "5", "--stall-timeout", "0.5", timeout=60)
    assert rc == 1, out + err
    assert "# state dump: no acquisition for" in out
    assert re.search(r"^#   writer \d: cs \(pvpatch\)", out, re.M)
    assert "#   lock word 0x" in out
    assert "# FAILURE: stall" in out
    assert END.match(out.splitlines()[-1])["verdict"] == "FAILURE"


@pytest.mark.parametrize("args,message", [
    (["--mode", "bogus"], "--mode 'bogus': must be one of native, pv, auto, toggle"),
    (["--lock", "bakery"], "--lock 'bakery': must be one of pvpatch"),
    (["--lock", "tas,tas"], "a lock is named twice"),
    (["--writers", "-3"], "--writers: -3 is out of range"),
    (["--duration", "0"], "--duration: 0 s is out of range"),
    (["--toggle-every", "-1"], "--toggle-every: -1 s is out of range"),
    (["--plot", "x.gif"], "--plot: x.gif: give a file name ending in .png or .svg"),
    (["--json", "/nonexistent/dir/x.json"], "/nonexistent/dir/x.json: cannot be written: No "
                                            "such file or directory"),
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
    assert END.match(out.splitlines()[-1])["verdict"] == "SUCCESS"
    assert "# toggle pv" in out


@pytest.mark.parametrize("field,value", [("duration", float("nan")), ("duration", float("inf")),
                                         ("stat_interval", float("nan")), ("rescue", 0.0),
                                         ("pv_spin", -1), ("hold_ns", 10**18)])
def test_the_api_refuses_what_the_cli_refuses(field, value):
    with pytest.raises(torture.TortureError, match=f"--{field.replace('_', '-')}"):
        torture.Config(**{field: value}).check()


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
