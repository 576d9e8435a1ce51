"""Real programs nobody here wrote, unchanged under `pvpatch run`.

sysbench (`mutex`, `threads`), xz and pigz come from the distribution (.ci/run installs them).
Each runs plain and under `pvpatch run --mode native|pv|auto`: its own checks pass (sysbench
counts its events; xz and pigz test the integrity of what they wrote and decompress it back to
the input), the multi-threaded compressed output is byte-identical to the plain run's, and the
preload's statistics show that the program's locks went through it.  A live-switch stress runs
xz with the lock switched every millisecond: hundreds of switches during the run, and the
program's own result is still correct.
"""
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

MODES = ["native", "pv", "auto"]


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (.ci/run installs it with apt-get)")
    return path


def preload() -> None:
    try:
        from pvpatch.run import preload_path
        preload_path()
    except Exception as exc:  # ImportError: no `pvpatch run` here; PreloadMissing: not built
        pytest.skip(f"libpvpatch-preload.so cannot be used: {exc}")


def pvrun(argv, mode, stats: Path, env=None, stdin=None, timeout=600, stdout=None):
    """`pvpatch run --mode MODE --json STATS -- argv`: the completed process and the stats."""
    p = subprocess.run([sys.executable, "-m", "pvpatch", "run", "--mode", mode, "--json",
                        str(stats), "--", *argv], stdin=stdin, stdout=stdout or subprocess.PIPE,
                       stderr=subprocess.PIPE, env={**os.environ, **(env or {})},
                       timeout=timeout)
    assert p.returncode == 0, (f"{argv[0]} under pvpatch run --mode {mode}: exit "
                               f"{p.returncode}\n{p.stderr[-3000:]!r}")
    assert stats.exists(), f"pvpatch run --json wrote nothing; stderr:\n{p.stderr[-2000:]!r}"
    s = json.loads(stats.read_text())
    assert not s.get("inert"), f"the preload ran inert: {s.get('why_inert')}"
    return p, s


@pytest.fixture(scope="module")
def text_input(tmp_path_factory) -> Path:
    """Deterministic, compressible input: 6 MiB of words from a seeded generator."""
    path = tmp_path_factory.mktemp("programs") / "input.txt"
    r = random.Random(13)
    words = ["".join(r.choice("abcdefghijklmnop") for _ in range(r.randint(2, 9)))
             for _ in range(4000)]
    with open(path, "w") as f:
        n = 0
        while n < 6 << 20:
            line = " ".join(r.choice(words) for _ in range(12)) + "\n"
            f.write(line)
            n += len(line)
    return path


# ---- sysbench -----------------------------------------------------------------------------------

def sysbench_events(out: str) -> int:
    m = re.search(r"total number of events:\s+(\d+)", out)
    assert m, f"sysbench printed no event count:\n{out}"
    return int(m.group(1))


SYSBENCH = {
    # test: (arguments, the events it must count, acquisitions it makes at least)
    "mutex": (["mutex", "--threads=4", "--mutex-num=64", "--mutex-locks=20000",
               "--mutex-loops=100", "run"], 4, 4 * 20000),
    "threads": (["threads", "--threads=8", "--thread-yields=20", "--thread-locks=4",
                 "--events=1000", "--time=0", "run"], 1000, 1000 * 20),
}


@pytest.mark.parametrize("test", sorted(SYSBENCH))
def test_sysbench_plain_counts_its_events(test):
    argv, events, _ = SYSBENCH[test]
    p = subprocess.run([tool("sysbench"), *argv], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert sysbench_events(p.stdout) == events, p.stdout


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("test", sorted(SYSBENCH))
def test_sysbench_under_pvpatch_run(test, mode, tmp_path):
    argv, events, acquisitions = SYSBENCH[test]
    exe = tool("sysbench")
    preload()
    p, stats = pvrun([exe, *argv], mode, tmp_path / "stats.json")
    out = p.stdout.decode()
    assert sysbench_events(out) == events, out
    assert stats["acquisitions"] >= acquisitions, (
        f"sysbench {test}'s locks did not go through the preload: {stats}")
    if mode != "auto":
        assert stats["variant"] == mode, stats


# ---- xz and pigz: deterministic multi-threaded output ----------------------------------------

COMPRESSORS = {
    # name: (compress argv (stdin -> stdout), integrity test argv, decompress argv)
    "xz": (["-1", "-T4", "--block-size=512KiB", "-c"], ["-t"], ["-dc"]),
    "pigz": (["-6", "-p", "4", "-b", "128", "-c"], ["-t"], ["-dc"]),
}


def compress_plain(name, src: Path, dst: Path) -> bytes:
    exe = tool(name)
    args, _, _ = COMPRESSORS[name]
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        subprocess.run([exe, *args], stdin=fin, stdout=fout, check=True, timeout=300)
    return dst.read_bytes()


def check_roundtrip(name, packed: Path, original: Path) -> None:
    """The program's own checks: its integrity test, and decompression gives the input back."""
    exe = tool(name)
    _, test_args, dec_args = COMPRESSORS[name]
    t = subprocess.run([exe, *test_args, str(packed)], capture_output=True, text=True,
                       timeout=300)
    assert t.returncode == 0, f"{name} -t {packed}: {t.stderr}"
    d = subprocess.run([exe, *dec_args, str(packed)], capture_output=True, timeout=300)
    assert d.returncode == 0 and d.stdout == original.read_bytes(), (
        f"{name} does not give the input back from {packed}")


@pytest.mark.parametrize("name", sorted(COMPRESSORS))
def test_compressor_plain_is_deterministic(name, text_input, tmp_path):
    a = compress_plain(name, text_input, tmp_path / "a")
    b = compress_plain(name, text_input, tmp_path / "b")
    assert a == b, f"{name}'s multi-threaded output differs between two plain runs"
    check_roundtrip(name, tmp_path / "a", text_input)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(COMPRESSORS))
def test_compressor_under_pvpatch_run_writes_the_same_bytes(name, mode, text_input, tmp_path):
    plain = compress_plain(name, text_input, tmp_path / "plain")
    preload()
    args, _, _ = COMPRESSORS[name]
    out = tmp_path / "pvpatch"
    with open(text_input, "rb") as fin, open(out, "wb") as fout:
        _, stats = pvrun([tool(name), *args], mode, tmp_path / "stats.json", stdin=fin,
                         stdout=fout)
    assert out.read_bytes() == plain, f"{name} under --mode {mode} wrote different bytes"
    check_roundtrip(name, out, text_input)
    assert stats["acquisitions"] > 0, f"{name}'s locks did not go through the preload: {stats}"


def test_live_switch_stress_on_xz_keeps_its_result(text_input, tmp_path):
    """xz -T4 with the lock switched every millisecond, until at least 300 switches happened
    during its runs (bounded: at most 20 runs); every run's output is byte-identical to the
    plain run's and decompresses to the input."""
    plain = compress_plain("xz", text_input, tmp_path / "plain")
    preload()
    args, _, _ = COMPRESSORS["xz"]
    switches, runs = 0, 0
    while switches < 300 and runs < 20:
        out = tmp_path / f"switched{runs}"
        stats_path = tmp_path / f"stats{runs}.json"
        with open(text_input, "rb") as fin, open(out, "wb") as fout:
            _, stats = pvrun([tool("xz"), *args], "auto", stats_path, stdin=fin, stdout=fout,
                             env={"PVPATCH_SWITCH_EVERY_MS": "1"})
        assert out.read_bytes() == plain, f"run {runs}: xz wrote different bytes while switched"
        check_roundtrip("xz", out, text_input)
        assert stats["switches"]["failed"] == 0, stats
        switches += stats["switches"]["completed"]
        runs += 1
    assert switches >= 300, f"only {switches} switches in {runs} runs of xz"


# ---- pvpatch bench programs -------------------------------------------------------------------

def bench_json(*args, timeout=600):
    p = subprocess.run([sys.executable, "-m", "pvpatch.cli", "bench", "programs", "--quick",
                        *args, "--json"], capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout)["programs"], p.stderr


def test_bench_programs_glibc_rows_with_cpus_load_and_progress():
    tool("sysbench"), tool("pigz")
    res, err = bench_json("--programs", "sysbench-mutex,pigz", "--regimes", "dedicated,hog",
                          "--configs", "glibc")
    cpus = os.cpu_count()
    assert res["cpus"] == cpus and len(res["loadavg"]) == 3 and len(res["loadavg_after"]) == 3
    assert res["regimes"] == {"dedicated": {"threads": cpus, "hog_processes": 0},
                              "hog": {"threads": cpus, "hog_processes": cpus}}
    got = {(r["program"], r["regime"], r["config"]) for r in res["rows"]}
    assert got == {(p, g, "glibc") for p in ("sysbench-mutex", "pigz")
                   for g in ("dedicated", "hog")}
    assert all(r["throughput"] > 0 and r["loadavg_1m"] for r in res["rows"]), res["rows"]
    # One progress line per measurement, numbered.
    assert len(re.findall(r"^\[\d+/4\] ", err, re.M)) == 4, err


def test_bench_programs_every_configuration_side_by_side():
    tool("pigz")
    preload()
    res, _ = bench_json("--programs", "pigz", "--regimes", "dedicated,oversubscribed")
    rows = {(r["regime"], r["config"]): r for r in res["rows"]}
    assert set(rows) == {(g, c) for g in ("dedicated", "oversubscribed")
                         for c in ("glibc", "native", "pv", "auto")}
    for g in ("dedicated", "oversubscribed"):
        assert rows[(g, "native")]["variants_at_exit"] == ["native"]
        assert rows[(g, "pv")]["variants_at_exit"] == ["pv"]
        assert rows[(g, "auto")]["stats_missing"] == 0
    ratios = {r["regime"]: r for r in res["ratios"]}
    for g in ("dedicated", "oversubscribed"):
        r = ratios[g]
        for k in ("native_vs_glibc", "pv_vs_glibc", "auto_vs_glibc", "auto_vs_best_fixed"):
            assert r[k] > 0, r
        assert r["best_fixed"] in ("native", "pv")


@pytest.mark.parametrize("args,says", [
    (["--programs", "nosuch"], "--programs: 'nosuch': give one or more of sysbench-mutex"),
    (["--configs", "glibc,fast"], "--configs: 'glibc,fast': give one or more of glibc"),
    (["--regimes", ""], "--regimes: '': give one or more of dedicated"),
])
def test_bench_programs_bad_options_are_named(args, says):
    p = subprocess.run([sys.executable, "-m", "pvpatch.cli", "bench", "programs", *args],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and says in p.stderr, p.stderr
