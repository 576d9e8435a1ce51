"""`pvpatch run [--mode auto|native|pv] [--hints-path P] [--stats] [--json F] -- PROGRAM ARGS...`

Starts an unmodified PROGRAM with libpvpatch-preload.so preloaded: its default, normal and
adaptive pthread mutexes, its spinlocks and its condition variables run on pvpatch's switchable
lock (docs/run.md).  The command only sets the environment the library reads and execs PROGRAM,
so PROGRAM keeps this process id, its signals and its exit status:

  PVPATCH_MODE        --mode (auto: the library's agent follows the host's hint page, as
                      pvpatch.auto() does; native, pv: that variant for the whole run)
  PVPATCH_HINTS_PATH  --hints-path
  PVPATCH_STATS=1     --stats: acquisitions, contention, sleeps and switches on stderr at exit
  PVPATCH_STATS_JSON  --json F: the same, written to F at exit
  LD_PRELOAD          the library, appended to an existing LD_PRELOAD

A PROGRAM that cannot be found exits 127, one that cannot be executed 126, as in a shell.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

LIBRARY = "libpvpatch-preload.so"
MODES = ("auto", "native", "pv")
EXIT_NOT_FOUND, EXIT_NOT_EXECUTABLE = 127, 126


class PreloadMissing(Exception):
    """The installed package has no preload library (a build without it)."""


def preload_path() -> str:
    """The absolute path of the installed libpvpatch-preload.so."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), LIBRARY)
    if not os.path.isfile(path):
        raise PreloadMissing(f"{path} does not exist: this pvpatch was installed without its "
                             f"preload library; reinstall it (pip install --force-reinstall .)")
    return path


def environment(base: dict[str, str], *, mode: str = "auto", hints_path: str | None = None,
                stats: bool = False, json_path: str | None = None) -> dict[str, str]:
    """The environment PROGRAM runs with: `base` plus the library and its settings."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    lib = preload_path()
    if any(c in lib for c in " :\t\n"):
        # ld.so splits LD_PRELOAD at spaces and colons: such a path cannot be preloaded.
        raise PreloadMissing(f"{lib}: the path holds a space or a colon, which LD_PRELOAD cannot "
                             f"carry; install pvpatch under a path without them")
    env = dict(base)
    old = env.get("LD_PRELOAD", "").strip()
    env["LD_PRELOAD"] = f"{old}:{lib}" if old else lib
    env["PVPATCH_MODE"] = mode
    for key in ("PVPATCH_HINTS_PATH", "PVPATCH_STATS", "PVPATCH_STATS_JSON",
                "PVPATCH_STATS_ROOT"):
        env.pop(key, None)  # this run's settings, not those of an enclosing run
    if hints_path is not None:
        env["PVPATCH_HINTS_PATH"] = os.path.abspath(hints_path)
    if stats:
        env["PVPATCH_STATS"] = "1"
    if json_path is not None:
        env["PVPATCH_STATS_JSON"] = os.path.abspath(json_path)
    return env


def _fail(message: str, status: int):
    from .cli import fail
    fail(f"run: {message}", status)


def run(args) -> int:
    argv = list(args.program)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        _fail("no PROGRAM given: pvpatch run [options] -- PROGRAM ARGS...", 2)
    if args.hints_path is not None and not os.path.exists(args.hints_path):
        # Not an error for the library (a missing page is "no hint": the safe default), but a
        # path typed on the command line that does not exist is most likely a mistake.
        _fail(f"--hints-path {args.hints_path}: no such file", 2)
    try:
        env = environment(dict(os.environ), mode=args.mode, hints_path=args.hints_path,
                          stats=args.stats, json_path=args.json)
    except PreloadMissing as exc:
        _fail(str(exc), 1)
    prog = argv[0]
    if os.sep not in prog and shutil.which(prog, path=env.get("PATH", os.defpath)) is None:
        _fail(f"{prog}: command not found", EXIT_NOT_FOUND)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(prog, argv, env)
    except FileNotFoundError:
        _fail(f"{prog}: no such file", EXIT_NOT_FOUND)
    except PermissionError:
        _fail(f"{prog}: permission denied", EXIT_NOT_EXECUTABLE)
    except OSError as exc:
        _fail(f"{prog}: execve: {exc.strerror}", EXIT_NOT_EXECUTABLE)
    return 1  # not reached


def register(sub) -> None:
    from . import cliargs
    p = sub.add_parser(
        "run", help="run an unmodified program with switchable pthread locks",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
        usage="pvpatch run [--mode auto|native|pv] [--hints-path P] [--stats] [--json F] "
              "-- PROGRAM ARGS...")
    p.add_argument("--mode", choices=MODES, default="auto",
                   help="auto (default): follow the host's hints; native or pv: fixed")
    p.add_argument("--hints-path", metavar="P", default=None,
                   help="the hint page auto follows (default: the agent's default page)")
    p.add_argument("--stats", action="store_true",
                   help="print acquisitions, contention, sleeps and switches at exit (stderr)")
    p.add_argument("--json", metavar="F", type=cliargs.output_file(".json"), default=None,
                   help="write the same statistics to F at exit")
    p.add_argument("program", nargs=argparse.REMAINDER, metavar="-- PROGRAM ARGS",
                   help="the program and its arguments")
    p.set_defaults(func=run)
