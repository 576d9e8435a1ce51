"""`pvpatch bench`."""
from __future__ import annotations

import json
import sys

from . import bench
from . import bench_call  # noqa: F401  (registers the `call` suite)


def run(args) -> int:
    import pvpatch  # noqa: F401

    names = args.suite or list(bench.SUITES)
    unknown = [n for n in names if n not in bench.SUITES]
    if unknown:
        print(f"pvpatch bench: unknown suite(s) {', '.join(unknown)}; known: "
              f"{', '.join(bench.SUITES)}", file=sys.stderr)
        return 2
    results = {}
    for name in names:
        if not args.json:
            print(f"== {name}", file=sys.stderr)
        kwargs = {}
        if name == "patch" and args.repeat:
            kwargs["repeat"] = args.repeat
        results[name] = bench.SUITES[name](**kwargs)
        if not args.json:
            fmt = bench.FORMATTERS.get(name)
            print(fmt(results[name]) if fmt else json.dumps(results[name], indent=2))
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


def register(sub) -> None:
    p = sub.add_parser("bench", help="measure switching (and, where present, locks and hints)",
                       description="Benchmarks, each a suite; ratios are measured side by side "
                                   "in one run.")
    p.add_argument("suite", nargs="*", help=f"suites to run (default: all)")
    p.add_argument("--repeat", type=int, default=0, help="runs per size for the patch suite")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)
