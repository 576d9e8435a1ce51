"""`pvpatch run`: the command face of pvpatch.run (docs/run.md); exec PROGRAM with the
preload library and its settings."""
from __future__ import annotations

import argparse
import os
import shutil
import sys

from ..run import EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, MODES, PreloadMissing, environment
from ..run import __doc__ as RUN_DOC
from . import args as cliargs


def _fail(message: str, status: int):
    from . import fail
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
    p = sub.add_parser(
        "run", help="run an unmodified program with switchable pthread locks",
        description=RUN_DOC.split("\n\n")[1].replace("\n", " "),
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
