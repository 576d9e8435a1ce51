"""`pvpatch demo`."""
from __future__ import annotations

from .. import demo


def register(sub) -> None:
    p = sub.add_parser("demo", help="the whole system in about a minute",
                       description=demo.__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="shorter steps (about half a minute)")
    p.set_defaults(func=lambda args: demo.run(quick=args.quick))
