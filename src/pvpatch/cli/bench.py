"""`pvpatch bench`."""
from __future__ import annotations

import argparse
import json
import sys

from .. import bench

from . import args as cliargs
from .. import bench_call  # noqa: F401  (registers the `call` suite)
from .. import bench_locks  # noqa: F401  (registers the `locks` suite)
from .. import bench_programs  # noqa: F401  (registers the `programs` suite)
from ..errors import PvpatchError


JSON_SCHEMA = 1  # --json; bumped when a field changes meaning


def _writer_list(text: str) -> list[int]:
    """--writers 1,2,4: each an integer in 1..1024."""
    one = cliargs.integer(1, 1024)
    parts = [t for t in text.split(",") if t.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"{text!r}: give writer counts such as 1,2,4")
    return [one(t.strip()) for t in parts]


def _name_list(known):
    """--programs xz,pigz: names from `known`, at least one."""
    def parse(text: str) -> list[str]:
        parts = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in parts if t not in known]
        if not parts or bad:
            raise argparse.ArgumentTypeError(
                f"{text!r}: give one or more of {', '.join(known)}")
        return parts
    return parse


def run(args) -> int:
    import pvpatch  # noqa: F401

    names = args.suite or list(bench.SUITES)
    unknown = [n for n in names if n not in bench.SUITES]
    if unknown:
        raise PvpatchError(f"unknown suite(s) {', '.join(unknown)}; known: "
                           f"{', '.join(bench.SUITES)}")
    results = {}
    for name in names:
        if args.json != "-":
            print(f"== {name}", file=sys.stderr)
        kwargs = {}
        if name == "patch" and args.repeat:
            kwargs["repeat"] = args.repeat
        if name == "patch" and args.threads:
            kwargs["threads"] = args.threads
        if name == "locks":
            if args.writers:
                kwargs["writers"] = tuple(args.writers)
            if args.seconds:
                kwargs["seconds"] = args.seconds
            if args.rounds:
                kwargs["rounds"] = args.rounds
            if args.hold_ns:
                kwargs["hold_ns"] = args.hold_ns
        if name == "programs":
            for opt in ("programs", "configs", "regimes"):
                if getattr(args, opt):
                    kwargs[opt] = tuple(getattr(args, opt))
            if args.rounds:
                kwargs["rounds"] = args.rounds
            kwargs["quick"] = args.quick
            kwargs["progress"] = lambda line: print(line, file=sys.stderr, flush=True)
        results[name] = bench.SUITES[name](**kwargs)
        if args.json != "-":
            fmt = bench.FORMATTERS.get(name)
            print(fmt(results[name]) if fmt else json.dumps(results[name], indent=2))
    if args.json == "-":
        print(json.dumps({"schema": JSON_SCHEMA, **results}, indent=2))
    elif args.json:
        with open(args.json, "w") as f:
            json.dump({"schema": JSON_SCHEMA, **results}, f, indent=2)
            f.write("\n")
    return 0


def register(sub) -> None:
    p = sub.add_parser("bench", help="measure switching and host-hint latency",
                       description="Benchmarks, each a suite; ratios are measured side by side "
                                   "in one run.")
    p.add_argument("suite", nargs="*", metavar="SUITE",
                   help=f"suites to run: {', '.join(bench.SUITES)} (default: all)")
    p.add_argument("--repeat", type=cliargs.integer(1, 100000), default=0, metavar="N",
                   help="runs per size for the patch suite (default: the suite's)")
    p.add_argument("--threads", type=cliargs.integer(0, 256), default=0, metavar="N",
                   help="patch suite: also measure with N idle threads and with N busy threads "
                        "running the sites being patched")
    p.add_argument("--writers", type=_writer_list, default=None, metavar="N,N,..",
                   help="locks suite: writer counts (default 1,2,4,8,16)")
    p.add_argument("--seconds", type=cliargs.seconds(0.01, 3600), default=0, metavar="S",
                   help="locks suite: seconds per lock per round (default 0.5)")
    p.add_argument("--rounds", type=cliargs.integer(1, 1000), default=0, metavar="N",
                   help="locks suite: rounds through every lock (default 2); programs suite: "
                        "runs of every configuration, alternating (default 3)")
    p.add_argument("--hold-ns", type=cliargs.integer(0, 10**9), default=0, metavar="NS",
                   help="locks suite: critical-section length (default 0)")
    p.add_argument("--programs", type=_name_list(bench_programs.PROGRAMS), default=None,
                   metavar="P,P,..", help="programs suite: programs to run (default: "
                   f"{','.join(bench_programs.PROGRAMS)})")
    p.add_argument("--configs", type=_name_list(bench_programs.CONFIGS), default=None,
                   metavar="C,C,..", help="programs suite: configurations (default: "
                   f"{','.join(bench_programs.CONFIGS)})")
    p.add_argument("--regimes", type=_name_list(bench_programs.REGIMES), default=None,
                   metavar="R,R,..", help="programs suite: regimes (default: "
                   f"{','.join(bench_programs.REGIMES)})")
    p.add_argument("--quick", action="store_true",
                   help="programs suite: one round, smaller work (about a minute)")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="F",
                   type=lambda t: t if t == "-" else cliargs.output_file()(t),
                   help="every result as one JSON object, on stdout or into file F")
    p.set_defaults(func=run)
