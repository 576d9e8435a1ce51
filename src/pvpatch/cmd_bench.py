"""`pvpatch bench`."""
from __future__ import annotations

import json
import sys

from . import bench, cliargs
from . import bench_call  # noqa: F401  (registers the `call` suite)
from .errors import PvpatchError


JSON_SCHEMA = 1  # --json; bumped when a field changes meaning


def run(args) -> int:
    import pvpatch  # noqa: F401

    names = args.suite or list(bench.SUITES)
    unknown = [n for n in names if n not in bench.SUITES]
    if unknown:
        raise PvpatchError(f"unknown suite(s) {', '.join(unknown)}; known: "
                           f"{', '.join(bench.SUITES)}")
    results = {}
    for name in names:
        if not args.json:
            print(f"== {name}", file=sys.stderr)
        kwargs = {}
        if name == "patch" and args.repeat:
            kwargs["repeat"] = args.repeat
        if name == "patch" and args.threads:
            kwargs["threads"] = args.threads
        results[name] = bench.SUITES[name](**kwargs)
        if not args.json:
            fmt = bench.FORMATTERS.get(name)
            print(fmt(results[name]) if fmt else json.dumps(results[name], indent=2))
    if args.json:
        print(json.dumps({"schema": JSON_SCHEMA, **results}, indent=2))
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
    p.add_argument("--json", action="store_true", help="every result as one JSON object")
    p.set_defaults(func=run)
