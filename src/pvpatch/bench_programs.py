"""`pvpatch bench programs`: real programs under glibc and under the preload, side by side.

Programs nobody here wrote, from the distribution (.ci/run installs them): sysbench `mutex`
(lock acquisitions per second: threads x --mutex-locks over sysbench's own total time), sysbench
`threads` (events per second in a fixed time, each event lock/yield/unlock loops), xz and pigz
compressing a generated 8 MiB text (--quick: 4 MiB) with one worker per thread (input MB per second of wall
time).  Each runs in three regimes: threads = the CPU count ("dedicated"), 4x the CPU count
("oversubscribed"), and threads = the CPU count with one CPU-bound hog process per CPU started
by the benchmark ("hog": CPUs taken away, as an oversubscribed host does).  In each regime the
configurations alternate, `rounds` times: glibc (the program as it is), then with
libpvpatch-preload.so in `--mode native`, `--mode pv` and `--mode auto`.  The figure of a
configuration is the median of its rounds; ratios are between configurations of one regime, so
measured side by side under the same noise.

The preload is applied exactly as `pvpatch run` applies it (LD_PRELOAD plus the PVPATCH_*
variables of docs/run.md), but the program is started directly, so that the start-up of a
Python interpreter is not part of the wall time of the pvpatch configurations.  auto follows a
hint page published by a `pvpatch hostd` that this benchmark starts (real sources: steal, load,
REALTIME as hostd computes them); the preload's own statistics of each run (variant at exit,
switches, acquisitions) are kept in the rows.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from . import bench
from .errors import PvpatchError

CONFIGS = ("glibc", "native", "pv", "auto")
REGIMES = ("dedicated", "oversubscribed", "hog")
PROGRAMS = ("sysbench-mutex", "sysbench-threads", "xz", "pigz")
TOOLS = {"sysbench-mutex": "sysbench", "sysbench-threads": "sysbench", "xz": "xz",
         "pigz": "pigz"}


def _sysbench_total_time(out: str) -> float:
    m = re.search(r"total time:\s+([0-9.]+)s", out)
    if not m:
        raise PvpatchError(f"bench programs: sysbench printed no total time:\n{out[-1500:]}")
    return float(m.group(1))


def _sysbench_events(out: str) -> int:
    m = re.search(r"total number of events:\s+(\d+)", out)
    if not m:
        raise PvpatchError(f"bench programs: sysbench printed no event count:\n{out[-1500:]}")
    return int(m.group(1))


class _Program:
    """How to run one program with `threads` threads and read its throughput."""

    def __init__(self, name: str, exe: str, quick: bool, workdir: str):
        self.name, self.exe, self.quick, self.workdir = name, exe, quick, workdir
        self.input = None
        if name in ("xz", "pigz"):
            self.input = _text_input(workdir, (4 if quick else 8) << 20)

    @property
    def unit(self) -> str:
        return {"sysbench-mutex": "acq/s", "sysbench-threads": "events/s"}.get(self.name, "MB/s")

    def argv(self, threads: int) -> list[str]:
        if self.name == "sysbench-mutex":
            # Two mutexes for all threads: contended; 50 iterations of work between locks.
            return [self.exe, "mutex", f"--threads={threads}", "--mutex-num=2",
                    f"--mutex-locks={1000000 if self.quick else 3000000}", "--mutex-loops=50",
                    "run"]
        if self.name == "sysbench-threads":
            return [self.exe, "threads", f"--threads={threads}", "--thread-yields=20",
                    "--thread-locks=4", f"--time={1 if self.quick else 2}", "--events=0", "run"]
        if self.name == "xz":
            return [self.exe, "-1", f"-T{threads}", "--block-size=512KiB", "-c"]
        return [self.exe, "-6", "-p", str(threads), "-b", "128", "-c"]

    def work(self, threads: int) -> float | None:
        """The fixed work of a run in the throughput's unit x seconds (None: time-bounded)."""
        if self.name == "sysbench-mutex":
            argv = self.argv(threads)
            return threads * int(next(a for a in argv if a.startswith("--mutex-locks="))
                                 .split("=")[1])
        if self.name == "sysbench-threads":
            return None
        return os.path.getsize(self.input) / 1e6

    def run(self, threads: int, env: dict, limit_s: float) -> tuple[float | None, float, bool]:
        """(throughput, wall seconds, timed out).  A run still going after `limit_s` (a lock
        that collapsed) is killed: its throughput is then an upper bound, the work over the
        limit (None where the work is not fixed).  An exit status other than 0 is an error."""
        argv = self.argv(threads)
        stdin = open(self.input, "rb") if self.input else subprocess.DEVNULL
        try:
            t0 = time.perf_counter()
            p = subprocess.run(argv, stdin=stdin, capture_output=True, env=env,
                               timeout=limit_s)
            wall = time.perf_counter() - t0
        except subprocess.TimeoutExpired:
            work = self.work(threads)
            return (work / limit_s if work is not None else None), limit_s, True
        finally:
            if self.input:
                stdin.close()
        if p.returncode != 0:
            raise PvpatchError(f"bench programs: {' '.join(argv)} exited with {p.returncode}: "
                               f"{p.stderr.decode(errors='replace')[-800:]}")
        if self.name == "sysbench-mutex":
            return self.work(threads) / _sysbench_total_time(p.stdout.decode()), wall, False
        if self.name == "sysbench-threads":
            out = p.stdout.decode()
            return _sysbench_events(out) / _sysbench_total_time(out), wall, False
        return self.work(threads) / wall, wall, False


def _text_input(workdir: str, size: int) -> str:
    """Deterministic compressible text (words from a seeded generator)."""
    path = os.path.join(workdir, f"input-{size}.txt")
    r = random.Random(13)
    words = ["".join(r.choice("abcdefghijklmnop") for _ in range(r.randint(2, 9)))
             for _ in range(4000)]
    with open(path, "w") as f:
        n = 0
        while n < size:
            line = " ".join(r.choice(words) for _ in range(12)) + "\n"
            f.write(line)
            n += len(line)
    return path


class _Hog:
    """One CPU-bound process per CPU, at the benchmark's own priority."""

    def __init__(self, n: int):
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL) for _ in range(n)]
        time.sleep(0.3)  # running before the first measurement

    def close(self) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait(10)


def _preload_env(mode: str, hints_path: str | None, stats: str) -> dict:
    """The environment `pvpatch run --mode MODE --json STATS` gives a program (the same
    function builds it)."""
    from .run import environment
    env = environment(dict(os.environ), mode=mode, hints_path=hints_path, json_path=stats)
    env.pop("PVPATCH_SWITCH_EVERY_MS", None)  # a stress setting of the caller's, not measured
    return env


def _read_stats(path: str) -> dict | None:
    import json
    try:
        with open(path) as f:
            s = json.load(f)
    except (OSError, ValueError):
        return None
    finally:
        if os.path.exists(path):
            os.unlink(path)
    sw = s.get("switches") or {}
    return {"variant": s.get("variant"), "acquisitions": s.get("acquisitions"),
            "contended": s.get("contended"), "sleeps": s.get("sleeps"),
            "switches": sw.get("completed"), "switches_failed": sw.get("failed"),
            "inert": s.get("inert")}


@bench.suite("programs")
def bench_programs(programs=PROGRAMS, configs=CONFIGS, regimes=REGIMES, rounds: int = 3,
                   quick: bool = False, limit_s: float | None = None, progress=None) -> dict:
    """Every program x regime x configuration, `rounds` times in alternation (--quick: 1 round,
    smaller work).  A run is killed after `limit_s` (default 20 s, --quick 8 s): a collapsed
    lock's figure is then an upper bound, flagged in its row."""
    for p in programs:
        if p not in PROGRAMS:
            raise PvpatchError(f"bench programs: unknown program {p!r}; known: "
                               f"{', '.join(PROGRAMS)}")
    for c in configs:
        if c not in CONFIGS:
            raise PvpatchError(f"bench programs: unknown configuration {c!r}; known: "
                               f"{', '.join(CONFIGS)}")
    for r in regimes:
        if r not in REGIMES:
            raise PvpatchError(f"bench programs: unknown regime {r!r}; known: "
                               f"{', '.join(REGIMES)}")
    if not (isinstance(rounds, int) and rounds >= 1):
        raise PvpatchError(f"bench programs: rounds must be >= 1, not {rounds!r}")
    if quick:
        rounds = 1
    if limit_s is None:
        limit_s = 8.0 if quick else 20.0
    missing = {p: TOOLS[p] for p in programs if shutil.which(TOOLS[p]) is None}
    if missing:
        raise PvpatchError("bench programs: not installed: " + ", ".join(
            sorted(set(missing.values()))) + " (.ci/run installs them with apt-get)")
    if any(c != "glibc" for c in configs):
        try:
            from .run import preload_path
            preload_path()
        except Exception as exc:  # ImportError: no `pvpatch run`; PreloadMissing: not built
            raise PvpatchError(f"bench programs: the preload library cannot be used ({exc}); "
                               f"only the glibc configuration can run (--configs glibc)") from exc

    cpus = os.cpu_count() or 1
    res = {"suite": "programs", "cpus": cpus, "loadavg": list(os.getloadavg()),
           "rounds": rounds, "quick": quick, "limit_s": limit_s, "configs": list(configs),
           "regimes": {"dedicated": {"threads": cpus, "hog_processes": 0},
                       "oversubscribed": {"threads": 4 * cpus, "hog_processes": 0},
                       "hog": {"threads": cpus, "hog_processes": cpus}},
           "rows": [], "ratios": []}
    res["regimes"] = {k: v for k, v in res["regimes"].items() if k in regimes}
    workdir = tempfile.mkdtemp(prefix="pvpatch-bench-programs-")
    hostd = None
    total = len(programs) * len(regimes) * len(configs) * rounds
    done = 0
    try:
        if "auto" in configs:
            from .bench_locks import _Hostd
            hostd = _Hostd()
            res["auto"] = {"hints": "pvpatch hostd, real sources, interval 0.2 s"}
        progs = {p: _Program(p, shutil.which(TOOLS[p]), quick, workdir) for p in programs}
        for regime in regimes:
            spec = res["regimes"][regime]
            hog = _Hog(spec["hog_processes"]) if spec["hog_processes"] else None
            try:
                for name in programs:
                    prog = progs[name]
                    acc = {c: {"tput": [], "wall": [], "load": [], "stats": [], "killed": 0}
                           for c in configs}
                    for _ in range(rounds):
                        for cfg in configs:
                            stats_path = os.path.join(workdir, "stats.json")
                            env = (dict(os.environ) if cfg == "glibc" else
                                   _preload_env(cfg, hostd.path if hostd else None,
                                                stats_path))
                            tput, wall, killed = prog.run(spec["threads"], env, limit_s)
                            a = acc[cfg]
                            a["killed"] += killed
                            a["tput"].append(tput)
                            a["wall"].append(wall)
                            a["load"].append(os.getloadavg()[0])
                            if cfg != "glibc":
                                a["stats"].append(_read_stats(stats_path))
                            done += 1
                            if progress:
                                fig = ("?" if tput is None else f"{tput:,.1f}")
                                progress(f"[{done}/{total}] {name} {regime} "
                                         f"({spec['threads']} threads) {cfg}: "
                                         + (f"killed after {limit_s:g} s (< {fig} "
                                            f"{prog.unit})" if killed else
                                            f"{fig} {prog.unit} in {wall:.2f} s"))
                    rows = {}
                    for cfg in configs:
                        a = acc[cfg]
                        row = {"program": name, "regime": regime, "threads": spec["threads"],
                               "hog_processes": spec["hog_processes"], "config": cfg,
                               "unit": prog.unit, "throughput": _median(a["tput"]),
                               "throughput_rounds": a["tput"], "wall_s": a["wall"],
                               "killed_rounds": a["killed"], "loadavg_1m": a["load"]}
                        if cfg != "glibc":
                            st = [s for s in a["stats"] if s]
                            row["variants_at_exit"] = sorted({s["variant"] for s in st
                                                              if s.get("variant")})
                            row["switches"] = sum(s.get("switches") or 0 for s in st)
                            row["acquisitions"] = sum(s.get("acquisitions") or 0 for s in st)
                            row["stats_missing"] = len(a["stats"]) - len(st)
                        rows[cfg] = row
                        res["rows"].append(row)
                    res["ratios"].append(_ratios(name, regime, rows))
            finally:
                if hog:
                    hog.close()
    finally:
        if hostd:
            hostd.close()
        shutil.rmtree(workdir, ignore_errors=True)
    res["loadavg_after"] = list(os.getloadavg())
    return res


def _median(xs: list) -> float | None:
    """The median of the rounds; a killed round with no bound (None) counts as 0."""
    return statistics.median([0.0 if x is None else x for x in xs]) if xs else None


def _ratios(name: str, regime: str, rows: dict) -> dict:
    """Each configuration over glibc, and auto over the best fixed mode (native or pv).
    `bounded`: a configuration with a killed round is involved (its figure is a bound)."""
    t = {c: r["throughput"] for c, r in rows.items() if r["throughput"]}
    r = {"program": name, "regime": regime,
         "bounded": sorted(c for c, row in rows.items() if row["killed_rounds"])}
    base = t.get("glibc")
    for c in ("native", "pv", "auto"):
        if c in t and base:
            r[f"{c}_vs_glibc"] = t[c] / base
    fixed = {c: t[c] for c in ("native", "pv") if c in t}
    if "auto" in t and fixed:
        best = max(fixed, key=fixed.get)
        r["best_fixed"] = best
        r["auto_vs_best_fixed"] = t["auto"] / fixed[best] if fixed[best] else None
    return r


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def format_programs(res: dict) -> str:
    out = [f"{res['cpus']} CPUs, load average {res['loadavg'][0]:.2f} at start, "
           f"{res['loadavg_after'][0]:.2f} at end; {res['rounds']} round(s) per "
           f"configuration, alternating; figures are medians of the rounds"]
    out.append(f"{'program':<17} {'regime':<15} {'threads':>7} {'hogs':>4} {'config':<7} "
               f"{'throughput':>14} {'unit':<9} {'ran':<10} {'switches':>8}")
    for r in res["rows"]:
        fig = "-" if r["throughput"] is None else f"{r['throughput']:,.1f}"
        if r.get("killed_rounds"):
            fig = f"<{fig}"
        out.append(f"{r['program']:<17} {r['regime']:<15} {r['threads']:>7} "
                   f"{r['hog_processes']:>4} {r['config']:<7} "
                   f"{fig:>14} {r['unit']:<9} "
                   f"{','.join(r.get('variants_at_exit', [])) or '-':<10} "
                   f"{r['switches'] if 'switches' in r else '-':>8}")
    out.append("ratios (same regime, side by side):")
    out.append(f"{'program':<17} {'regime':<15} {'native/glibc':>12} {'pv/glibc':>9} "
               f"{'auto/glibc':>10} {'auto/best fixed':>22}")
    for r in res["ratios"]:
        bf = (f"{_fmt(r.get('auto_vs_best_fixed'), '.2f')} ({r['best_fixed']})"
              if r.get("best_fixed") else "-")
        out.append(f"{r['program']:<17} {r['regime']:<15} "
                   f"{_fmt(r.get('native_vs_glibc'), '.2f'):>12} "
                   f"{_fmt(r.get('pv_vs_glibc'), '.2f'):>9} "
                   f"{_fmt(r.get('auto_vs_glibc'), '.2f'):>10} {bf:>22}"
                   + (f"  (bounds: {','.join(r['bounded'])})" if r.get("bounded") else ""))
    out.append(f"<: a round was killed after {res['limit_s']:g} s (the lock collapsed); the "
               f"figure is an upper bound")
    return "\n".join(out)


bench.FORMATTERS["programs"] = format_programs
