"""The `pvpatch` command.

Each subcommand lives in its own module, which exposes ``register(subparsers)``: it adds its parser
and sets ``func`` (called with the parsed arguments; returns the exit status).  Add a module to
COMMANDS to add a command.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import PvpatchError

COMMANDS = (
    "pvpatch.cmd_demo",
    "pvpatch.cmd_sites",
    "pvpatch.cmd_selftest",
    "pvpatch.cmd_bench",
    "pvpatch.cmd_hostd",
    "pvpatch.cmd_hints",
    "pvpatch.cmd_torture",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pvpatch",
        description="Runtime paravirt patching in user space.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PvpatchError as exc:
        print(f"pvpatch {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
