"""The pthread contract under libpvpatch-preload.so (tests/c/conformance.c).

The suite is one C program with its own checks (return values, errno, timeouts that really
wait, condition-variable wake-ups counted per round, spurious wake-ups and signals tolerated,
cancellation points, static initialisers, the kinds that pass through to glibc, process-shared
objects, fork in the middle, a thousand threads).  It runs three ways:

- plain, against glibc: every check passes, which proves the suite states glibc's contract;
- against an interposer with known faults (tests/c/conformance_faulty.c): each fault is
  reported by the check that owns it, in bounded time, which proves the checks can fail;
- under the preload with PVPATCH_SWITCH_EVERY_MS, the lock switched live every few
  milliseconds while every check runs: the preload keeps the contract, and its statistics show
  that the program's locks went through it and that the switches happened.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "tests" / "c" / "conformance.c"
FAULTY = ROOT / "tests" / "c" / "conformance_faulty.c"

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")


@pytest.fixture(scope="module")
def conformance(tmp_path_factory):
    exe = tmp_path_factory.mktemp("conformance") / "conformance"
    subprocess.run(["gcc", "-O2", "-g", "-pthread", "-std=gnu11", "-Wall", "-Wextra", "-Werror",
                    str(SRC), "-o", str(exe)], check=True, timeout=120)
    return exe


@pytest.fixture(scope="module")
def checks(conformance):
    out = subprocess.run([str(conformance), "-l"], capture_output=True, text=True, check=True,
                         timeout=30).stdout.split()
    return out


def preload_path() -> str:
    """The installed preload library, or a skip naming why it cannot be used."""
    try:
        from pvpatch.run import preload_path as path
        return path()
    except Exception as exc:  # ImportError: no `pvpatch run` here; PreloadMissing: not built
        pytest.skip(f"libpvpatch-preload.so cannot be used: {exc}")


def run(exe, *args, env=None, timeout=900):
    """Run the suite; its exit status, the result of each check, and the whole output."""
    try:
        p = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired as e:  # killed: report how far it got
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout
        pytest.fail(f"the suite did not finish within {timeout} s; its output:\n{out}")
    return p.returncode, verdicts(p.stdout), p.stdout + p.stderr


def verdicts(stdout: str) -> dict:
    return {name: verdict for verdict, name in re.findall(r"^(PASS|FAIL) (\w+)", stdout, re.M)}


def assert_all_passed(rc, results, out, checks):
    failed = [n for n, v in results.items() if v != "PASS"]
    missing = [n for n in checks if n not in results]
    assert rc == 0 and not failed and not missing, (
        f"exit {rc}; failed: {failed}; did not run: {missing}\n{out}")
    assert f"conformance: {len(checks)} passed, 0 failed" in out, out


def test_the_suite_covers_every_interposed_function():
    """Every function the preload interposes is called by the suite (by name, in the source)."""
    src = SRC.read_text()
    interposed = [f"pthread_mutex_{f}" for f in
                  ("init", "destroy", "lock", "trylock", "timedlock", "clocklock", "unlock")]
    interposed += [f"pthread_spin_{f}" for f in ("init", "destroy", "lock", "trylock", "unlock")]
    interposed += [f"pthread_cond_{f}" for f in ("init", "destroy", "wait", "timedwait",
                                                 "clockwait", "signal", "broadcast")]
    missing = [f for f in interposed if not re.search(rf"\b{f}\(", src)]
    assert not missing, f"the suite never calls {missing}"


def test_plain_glibc_passes_every_check(conformance, checks):
    assert len(checks) >= 20, checks
    rc, results, out = run(conformance)
    assert_all_passed(rc, results, out, checks)


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    so = tmp_path_factory.mktemp("faulty") / "faulty.so"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-Wall", "-Werror", str(FAULTY), "-o",
                    str(so), "-ldl"], check=True, timeout=120)
    return so


@pytest.mark.parametrize("fault,check,says", [
    ("drop-signal", "cond_signal_wakes_one", "lost wake-up"),
    ("trylock-errno", "mutex_basic", "expected EBUSY"),
    ("early-timeout", "mutex_timeouts", "before its deadline"),
])
def test_a_faulty_interposer_is_caught(conformance, faulty, fault, check, says):
    """Negative control: each known fault fails the check that owns it (no hang, no pass).
    (cond_cancel_keeps_signal is not among them: glibc's cancellation cleanup may wake another
    waiter itself, which can hide a signal the fault dropped in that round.)"""
    rc, results, out = run(conformance, "-k", check, timeout=300,
                           env={"LD_PRELOAD": str(faulty), "CONFORMANCE_FAULT": fault})
    assert rc == 1 and results.get(check) == "FAIL", out
    line = next(l for l in out.splitlines() if l.startswith(f"FAIL {check}"))
    assert says in line, out


def test_the_watchdog_turns_a_hang_into_a_failure(conformance, faulty):
    """A lost signal that leaves a thread blocked forever ends as a reported failure with what
    the check was waiting for, not as a hung test (cond_with_passthrough_mutexes waits without
    a deadline; its join is bounded)."""
    rc, results, out = run(conformance, "-k", "cond_with_passthrough_mutexes", timeout=300,
                           env={"LD_PRELOAD": str(faulty), "CONFORMANCE_FAULT": "drop-signal"})
    assert rc == 3, out
    assert "did not finish within 10 s" in out and "waiting for: cond with a" in out, out


def read_stats(path: Path) -> dict:
    assert path.exists(), f"the preload wrote no statistics to {path}"
    return json.loads(path.read_text())


@pytest.mark.parametrize("every_ms", [2, 5])
def test_preload_keeps_the_contract_with_the_lock_switched_live(conformance, checks, every_ms,
                                                                tmp_path):
    lib = preload_path()
    stats = tmp_path / "stats.json"
    rc, results, out = run(conformance, env={
        "LD_PRELOAD": lib, "PVPATCH_SWITCH_EVERY_MS": str(every_ms),
        "PVPATCH_STATS_JSON": str(stats), "PVPATCH_STATS": "1"})
    assert_all_passed(rc, results, out, checks)
    s = read_stats(stats)
    assert not s.get("inert"), f"the preload ran inert: {s.get('why_inert')}\n{out}"
    assert s["acquisitions"] > 100000, f"the program's locks did not go through the preload: {s}"
    # The suite runs for seconds: a switch every few ms gives hundreds; 20 is the floor that
    # still proves the lock was switched under every check on a very busy machine.
    assert s["switches"]["completed"] >= 20, s
    # A switch to native whose grace period outlasts its bound on a loaded machine is refused
    # and leaves the group at hybrid, safe with any thread in flight (docs/locks.md); the next
    # switch retries.  That is the only failure allowed: never a failed system call.
    if s["switches"]["failed"]:
        last = re.search(r"last failed switch: (.*)", out)
        assert last and "stays at hybrid" in last.group(1), (s, out[-2000:])


# Fixed native is the lock for threads <= CPUs: with more waiters than CPUs a fair spinning
# queue collapses by orders of magnitude (docs/locks.md), and the suite's stress checks (8 to 1000
# threads on this 2-CPU machine) then outlast their bounds without any contract being broken.
# Native runs the checks that keep at most one waiter per CPU; pv runs them all.
NATIVE_CHECKS = ("single_thread", "mutex_basic", "mutex_timeouts", "errno_untouched",
                 "cond_timeouts", "signals_during_waits", "cond_cancel", "not_cancellation",
                 "passthrough", "spinlocks", "process_shared")


@pytest.mark.parametrize("mode", ["native", "pv"])
def test_pvpatch_run_keeps_the_contract_in_a_fixed_mode(conformance, checks, mode, tmp_path):
    preload_path()
    stats = tmp_path / "stats.json"
    args = ["-k", ",".join(NATIVE_CHECKS)] if mode == "native" else []
    p = subprocess.run([sys.executable, "-m", "pvpatch", "run", "--mode", mode, "--json",
                        str(stats), "--", str(conformance), *args], capture_output=True,
                       text=True, timeout=900)
    ran = checks if mode == "pv" else [c for c in checks if any(k in c for k in NATIVE_CHECKS)]
    assert len(ran) >= 12, ran
    assert_all_passed(p.returncode, verdicts(p.stdout), p.stdout + p.stderr, ran)
    s = read_stats(stats)
    assert s["mode"] == mode and s["variant"] == mode, s
    assert s["acquisitions"] > 10000, s
