"""examples/pvexample built as its users build it: pip, build isolation on, pvpatch in its
build-system.requires, into a fresh virtual environment, offline (--no-index) from a directory
holding the wheel of this pvpatch and of what it needs; then imported, switched and checked.

The wheel directory is made once per test session (pip wheel of this checkout: about 15 s, the
dependencies come from the index or pip's cache, as for `.ci/run`'s own install)."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "pvexample")


def _run(cmd, timeout, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} -> {r.returncode}\n{r.stdout[-3000:]}" \
                              f"\n{r.stderr[-3000:]}"
    return r.stdout


def _offline_env():
    """pip sees only what the command line gives it: no config file, no PIP_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory):
    """pvpatch's wheel, the wheels it depends on, and setuptools and wheel (the example's other
    build requirements)."""
    d = tmp_path_factory.mktemp("wheelhouse")
    # From a copy of the checkout: a build leaves build/ and *.egg-info behind.
    src = tmp_path_factory.mktemp("pvpatch_src") / "pvpatch"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", "*.so",
        ".pytest_cache"))
    # With the disasm extra (capstone): a third-party template is used inline only once the
    # decoder has checked it (docs/extensions.md, the template ABI); without it, it is a call.
    _run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(d), f"{src}[disasm]",
          "setuptools>=68", "wheel"], timeout=600)
    assert any(n.startswith("pvpatch-") for n in os.listdir(d)), os.listdir(d)
    return d


@pytest.fixture(scope="session")
def example_venv(wheelhouse, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("example")
    src = tmp / "pvexample"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "*.so"))
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], timeout=120)
    py = str(venv / "bin" / "python")
    # Build isolation on (pip's default): pip builds the example in a fresh environment that
    # holds only its build-system.requires, pvpatch among them.
    _run([py, "-m", "pip", "install", "-q", "--no-compile", "--no-index", "--find-links",
          str(wheelhouse), "pvpatch[disasm]", str(src)], timeout=900, env=_offline_env())
    return py


CHECK = textwrap.dedent(r"""
    import json, os, sys
    import pvpatch_build
    inc = pvpatch_build.get_include()
    out = {"include": inc, "build_imported_pvpatch": "pvpatch" in sys.modules}
    import pvexample, pvpatch
    from pvpatch.cli.sites import site_rows
    out["pvpatch_file"] = pvpatch.__file__
    out["boot_tag"] = [pvexample.boot_tag()]
    res = {}
    for v in ("fast", "checked", "counting", "fast"):
        pvpatch.runtime_patch({"example": v})
        c0 = pvexample.calls()
        res[v] = {"add": pvexample.add(2, 3), "big": pvexample.add(2**62, 2**62),
                  "clear": pvexample.clear(7), "sum": pvexample.sum_to(100),
                  "current": pvexample.current(), "boot_tag": pvexample.boot_tag(),
                  "kinds": sorted({(r["section"], r["op"], r["kind"]) for r in site_rows()
                                   if r["module"] == "pvexample"})}
        pvexample.note(1)
        res[v]["calls"] = pvexample.calls() - c0
    out["variants"] = res
    pvexample.switch("checked")                  # from C: pvpatch_runtime_patch
    out["after_c_switch"] = [pvpatch.current()["example"], pvexample.current("example")]
    counts = {}
    # pv with more threads than CPUs; native with at most one thread per CPU: a fair spinning
    # queue with more waiters than CPUs collapses (a preempted waiter stalls the queue:
    # docs/locks.md), which is what pv is for, and would make a fixed count take minutes.
    cpus = len(os.sched_getaffinity(0))
    for lv, threads in (("pv", 4), ("native", max(1, min(4, cpus)))):
        pvpatch.runtime_patch({"lock": lv})
        counts[lv] = [threads, pvexample.locked_count(threads, 20000)]
    out["locked_count"] = counts
    print(json.dumps(out))
""")


def test_example_builds_isolated_and_runs(example_venv):
    out = json.loads(_run([example_venv, "-c", CHECK], timeout=120).splitlines()[-1])
    assert out["include"].endswith(os.path.join("pvpatch", "include"))
    assert not out["build_imported_pvpatch"]        # the build helper has no side effects
    assert "/venv/" in out["pvpatch_file"]           # the installed wheel, not this checkout
    r = out["variants"]
    for x in r.values():
        x["kinds"] = {tuple(k) for k in x["kinds"]}
    assert r["fast"]["add"] == r["checked"]["add"] == r["counting"]["add"] == 5
    assert r["fast"]["big"] == -2**63                # wraps: the inline lea
    assert r["checked"]["big"] == 2**63 - 1          # saturates
    assert all(x["clear"] == 0 and x["sum"] == 4950 for x in r.values())
    assert [r[v]["current"] for v in ("fast", "checked", "counting")] == \
        ["fast", "checked", "counting"]
    # add, clear (1 + 1), sum_to(100) (100 adds + 100 notes), note: 204 counted calls
    assert r["counting"]["calls"] == 204 and r["fast"]["calls"] == r["checked"]["calls"] == 0
    assert ("runtime", "add", "inline") in r["fast"]["kinds"]
    assert ("runtime", "clear", "inline") in r["fast"]["kinds"]
    assert ("runtime", "note", "nop") in r["fast"]["kinds"]
    assert ("runtime", "add", "call") in r["checked"]["kinds"]
    assert ("boot", "tag", "call") in r["fast"]["kinds"]
    # the boot site was rendered once, at registration (group at fast), and stays so
    assert out["boot_tag"] == [1] and all(x["boot_tag"] == 1 for x in r.values())
    assert out["after_c_switch"] == ["checked", "checked"]
    assert sorted(out["locked_count"]) == ["native", "pv"]
    assert all(total == threads * 20000 for threads, total in out["locked_count"].values()), \
        out["locked_count"]
