"""`pvpatch run` and libpvpatch-preload.so (docs/run.md): unmodified C programs
(tests/c/run_checks.c) run with their pthread locks interposed while the lock group is switched
every 2 ms, and get glibc's results: counts without lost updates under contention, EBUSY,
ETIMEDOUT and EINVAL where glibc gives them, condition variables that wake their waiters, fork,
2000 threads, no thread at all, and recursive and error-checking mutexes passed through to
glibc.  Every check is bounded by a watchdog inside the program (alarm: exit 3 with its
progress printed) and by a subprocess timeout behind it."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pvpatch

ROOT = Path(__file__).resolve().parent.parent
CC = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler on PATH")

WATCHDOG_S = 90  # inside the program
TIMEOUT_S = 150  # behind it


@pytest.fixture(scope="module")
def checks(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("run") / "run_checks"
    subprocess.run([CC, "-O2", "-Wall", "-pthread", str(ROOT / "tests/c/run_checks.c"), "-o",
                    str(out)], check=True, capture_output=True, timeout=120)
    return str(out)


def pvpatch_run(args: list[str], env_extra: dict | None = None, timeout: float = TIMEOUT_S):
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "pvpatch", "run", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def run_check(checks: str, tmp_path: Path, check: str, *extra: str, mode: str = "auto",
              every_ms: str | None = "2"):
    """One check under `pvpatch run --json`, switched every `every_ms`; returns (proc, stats)."""
    out = tmp_path / "stats.json"
    env = {"PVPATCH_SWITCH_EVERY_MS": every_ms} if every_ms else {}
    p = pvpatch_run(["--mode", mode, "--json", str(out), "--", checks, check, *extra,
                     str(WATCHDOG_S)], env)
    assert "FAIL" not in p.stdout and p.returncode == 0, (
        f"{check}: exit {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}")
    assert out.exists(), f"{check}: no statistics written\nstderr: {p.stderr}"
    return p, json.loads(out.read_text())


def assert_switched(stats: dict, at_least: int = 1):
    """The lock group really was registered and switched during the run."""
    assert stats["registered"] and not stats["inert"], stats["why_inert"]
    assert stats["switches"]["completed"] >= at_least, stats["switches"]
    assert stats["lock_stats"]["late_wakeups"] == 0, stats["lock_stats"]


@pytest.mark.parametrize("check,args,min_acq", [
    ("static", [], 30000),       # 2 threads x 5000 x (default + adaptive + spinlock)
    ("trylock", [], 4),
    ("timed", [], 2),
    ("cond", [], 80000),         # 2 x 20000 items, each a producer's and a consumer's lock
    ("fork", [], 1),
    ("threads", ["2000"], 12000),
    ("nothreads", [], 100000),
])
def test_check_under_switching(checks, tmp_path, check, args, min_acq):
    p, stats = run_check(checks, tmp_path, check, *args)
    assert stats["acquisitions"] >= min_acq, stats
    assert stats["pid"] > 0 and stats["program"] == "run_checks"
    assert_switched(stats)


def test_static_initialisers_are_interposed_and_the_detector_can_tell(checks, tmp_path):
    # The check reads glibc's owner field to see whose lock ran: under glibc alone the same
    # program must see glibc's, or the positive result above would mean nothing.
    plain = subprocess.run([checks, "glibc-static", str(WATCHDOG_S)], capture_output=True,
                           text=True, timeout=TIMEOUT_S)
    assert plain.returncode == 0 and "interposed=0" in plain.stdout, plain.stdout
    pre = pvpatch_run(["--mode", "pv", "--", checks, "glibc-static", str(WATCHDOG_S)])
    assert pre.returncode == 1, pre.stdout
    assert "static default mutex interposed=1, adaptive=1, expected 0" in pre.stdout, pre.stdout


@pytest.mark.parametrize("mode", ["native", "pv", "auto"])
def test_recursive_and_errorcheck_pass_through(checks, tmp_path, mode):
    run_check(checks, tmp_path, "recursive", mode=mode, every_ms=None)


def test_fixed_modes(checks, tmp_path):
    for mode in ("native", "pv"):
        _, stats = run_check(checks, tmp_path, "nothreads", mode=mode, every_ms=None)
        assert stats["mode"] == mode
        if stats["registered"]:
            assert stats["variant"] == mode, stats


def test_auto_follows_the_hint_page(checks, tmp_path):
    # A real hostd publishing a simulated flip, oversubscribed then dedicated; the program's
    # agent (started by the library, as pvpatch.auto() starts it) switches after each.
    page, out = tmp_path / "hints", tmp_path / "stats.json"
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    hostd = subprocess.Popen([sys.executable, "-m", "pvpatch", "hostd", "--path", str(page),
                              "--interval", "0.2", "--simulate", "0:oversubscribed,3:realtime",
                              "--duration", "12"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 20
        while not page.exists() or page.stat().st_size == 0:
            assert hostd.poll() is None and time.monotonic() < deadline, "hostd did not start"
            time.sleep(0.05)
        p = pvpatch_run(["--mode", "auto", "--hints-path", str(page), "--json", str(out), "--",
                         checks, "spin", "7", str(WATCHDOG_S)])
    finally:
        hostd.terminate()
        hostd.wait(20)
    assert p.returncode == 0 and "spin ok" in p.stdout, p.stdout + p.stderr
    stats = json.loads(out.read_text())
    assert stats["registered"] and not stats["inert"], stats["why_inert"]
    done = [s["to"] for s in stats["switches"]["agent"] if s["ok"]]
    assert "pv" in done and done[-1] == "native", stats["switches"]
    assert done.index("pv") < len(done) - 1
    assert stats["variant"] == "native"


def test_stats_on_stderr(checks):
    p = pvpatch_run(["--mode", "pv", "--stats", "--", checks, "nothreads", "30"])
    assert p.returncode == 0, p.stderr
    line = [ln for ln in p.stderr.splitlines() if "acquisitions" in ln]
    assert line and "run_checks (pid" in line[0], p.stderr
    acq = int(re.search(r"\): (\d+) acquisitions", line[0]).group(1))
    assert acq >= 100000
    assert any(ln.startswith("pvpatch: ") and "switches" in ln for ln in p.stderr.splitlines())


def test_exit_status_is_the_programs():
    assert pvpatch_run(["--", "sh", "-c", "exit 7"]).returncode == 7
    assert pvpatch_run(["--", "true"]).returncode == 0


def test_missing_program_exits_127_like_a_shell():
    p = pvpatch_run(["--", "no-such-program-pvpatch"])
    assert p.returncode == 127
    assert p.stderr.strip() == "pvpatch: error: run: no-such-program-pvpatch: command not found"
    p = pvpatch_run(["--", "/nonexistent/prog"])
    assert p.returncode == 127 and "/nonexistent/prog" in p.stderr


def test_not_executable_exits_126(tmp_path):
    f = tmp_path / "script"
    f.write_text("#!/bin/sh\nexit 0\n")
    f.chmod(0o644)
    p = pvpatch_run(["--", str(f)])
    assert p.returncode == 126 and "permission denied" in p.stderr


@pytest.mark.parametrize("args,needle", [
    (["--mode", "fast", "--", "true"], "--mode: invalid choice: 'fast'"),
    ([], "no PROGRAM given"),
    (["--"], "no PROGRAM given"),
    (["--hints-path", "/nonexistent/page", "--", "true"], "--hints-path /nonexistent/page"),
    (["--json", "/nonexistent/dir/x.json", "--", "true"], "cannot be written"),
])
def test_bad_command_is_exit_2(args, needle):
    p = pvpatch_run(args)
    assert p.returncode == 2 and needle in p.stderr, p.stderr
    assert p.stderr.count("\n") == 1


def test_ld_preload_is_appended_and_settings_set():
    env = {"LD_PRELOAD": "libm.so.6", "PVPATCH_STATS": "1"}
    p = pvpatch_run(["--mode", "native", "--", "sh", "-c",
                     'echo "$LD_PRELOAD|$PVPATCH_MODE|${PVPATCH_STATS-unset}"'], env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"libm.so.6:{pvpatch.preload_path()}|native|unset"


def test_bad_environment_names_the_variable_and_runs_pv(checks, tmp_path):
    # A program started without `pvpatch run`, with a bad setting: one line naming it, and the
    # program still runs (pv, unswitched), correctly.
    out = tmp_path / "s.json"
    for var, val in (("PVPATCH_MODE", "fastest"), ("PVPATCH_SWITCH_EVERY_MS", "0")):
        env = dict(os.environ, LD_PRELOAD=pvpatch.preload_path(), PVPATCH_STATS_JSON=str(out))
        env[var] = val
        p = subprocess.run([checks, "static", str(WATCHDOG_S)], env=env, capture_output=True,
                           text=True, timeout=TIMEOUT_S)
        assert p.returncode == 0 and "interposed=1" in p.stdout, p.stdout + p.stderr
        assert f"pvpatch-preload: error: {var}={val}:" in p.stderr, p.stderr
        stats = json.loads(out.read_text())
        assert stats["inert"] and var in stats["why_inert"]
        assert stats["switches"]["completed"] == 0


def test_library_is_python_free():
    path = pvpatch.preload_path()
    assert os.path.isabs(path) and path.endswith("libpvpatch-preload.so")
    needed = subprocess.run(["readelf", "-d", path], capture_output=True, text=True,
                            check=True).stdout
    libs = [ln.split("[")[1].rstrip("]") for ln in needed.splitlines() if "(NEEDED)" in ln]
    assert libs and not any("python" in lib for lib in libs), libs
    syms = subprocess.run(["nm", "-D", "--defined-only", path], capture_output=True, text=True,
                          check=True).stdout.split()
    exported = {s for s in syms if s.startswith(("pthread_", "pvp", "pvrt", "pvlock", "pvagent",
                                                 "__start", "__stop"))}
    assert exported and all(s.startswith("pthread_") for s in exported), exported


def test_the_readme_line_runs_sort_plain_and_under_pvpatch_run(tmp_path):
    """The README's unmodified-program line, as written (only the installed command's path
    differs): GNU sort's parallel merge gives the same output plain and under `pvpatch run`,
    and the preload's statistics say its locks ran on pvpatch's lock."""
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    line = next(ln for ln in readme.splitlines() if ln.startswith("seq ") and "pvpatch run" in ln)
    cmd = line.replace(".venv/bin/pvpatch", f"{sys.executable} -m pvpatch.cli")
    p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, (p.stdout, p.stderr)
    sums = p.stdout.split()
    assert len(sums) == 4 and sums[0] == sums[2], p.stdout  # "<md5> -" twice
    assert "acquisitions" in p.stderr and "pvpatch: sort" in p.stderr, p.stderr
