"""The `pvpatch` command: the command faces of the domain modules, one module per command in
this package (the domain modules beside it -- patcher, locks, torture, hints, bench, run -- know
nothing of argparse).

Each subcommand lives in its own module, which exposes ``register(subparsers)``: it adds its parser
and sets ``func`` (called with the parsed arguments; returns the exit status).  Add a module to
COMMANDS to add a command.  Every number and path an option takes is converted and checked by
the types in ``pvpatch.cli.args``, before anything runs.

Exit status, and what is printed on stderr (always one line, never a traceback, for anything a
user can get wrong):

  0    success
  1    the run found a failure (a FAIL, a stall, a violation), or could not run: a system call
       failed or the machine is out of resources (threads, memory)  -- ``pvpatch: error: ...``
  2    a mistake in the command: an unknown option, a value out of range, an output file that
       cannot be written, a missing extra  -- ``pvpatch: error: ...``
  130  interrupted (SIGINT)
  141  the reader of stdout went away (``pvpatch sites | head``): stop quietly, as a tool killed
       by SIGPIPE does (128 + SIGPIPE)
"""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import signal
import sys

from ..errors import PvpatchError, SyscallError
from ..extras import MissingExtra

COMMANDS = (
    "pvpatch.cli.demo",
    "pvpatch.cli.sites",
    "pvpatch.cli.selftest",
    "pvpatch.cli.bench",
    "pvpatch.cli.hostd",
    "pvpatch.cli.hints",
    "pvpatch.cli.torture",
    "pvpatch.cli.run",
)

EXIT_FAILURE, EXIT_USAGE = 1, 2
EXIT_SIGINT, EXIT_SIGPIPE = 128 + signal.SIGINT, 128 + signal.SIGPIPE


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("pvpatch")
    except Exception:  # running from a source tree that was never installed
        from .. import __version__
        return __version__


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error: ``pvpatch: error: <command>: <what is wrong>``."""

    def error(self, message: str):  # noqa: D401  (argparse's hook)
        cmd = self.prog.partition(" ")[2]
        fail(f"{cmd}: {message}" if cmd else message, EXIT_USAGE)


def fail(message: str, status: int):
    """Print the one error line and exit."""
    line = " ".join(str(message).split())  # one line, whatever the message held
    try:
        sys.stderr.write(f"pvpatch: error: {line}\n")
        sys.stderr.flush()
    except (BrokenPipeError, OSError):
        pass
    sys.exit(status)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="pvpatch",
        description="Runtime paravirt patching in user space.",
        epilog="Exit status: 0 success, 1 a failure found by the run (or it could not run), "
               "2 a mistake in the command.",
    )
    parser.add_argument("--version", action="version", version=f"pvpatch {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def _stdout_gone() -> None:
    """The reader of stdout has gone: point stdout at /dev/null so that the interpreter's final
    flush does not fail a second time and print an 'Exception ignored' message."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _is_resources(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, RuntimeError) and "can't start new thread" in str(exc):
        return True
    return isinstance(exc, OSError) and exc.errno in (errno.EAGAIN, errno.ENOMEM)


def _describe_oserror(exc: OSError) -> str:
    call = getattr(exc, "syscall", None) or exc.filename
    what = f"{call}: " if call else ""
    return f"{what}{exc.strerror or exc}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows up here for short outputs
        return status
    except BrokenPipeError:
        _stdout_gone()
        return EXIT_SIGPIPE
    except KeyboardInterrupt:
        return EXIT_SIGINT
    except MissingExtra as exc:
        fail(f"{args.command}: {exc}", EXIT_USAGE)
    except Exception as exc:
        if _is_resources(exc):
            what = (_describe_oserror(exc) if isinstance(exc, OSError)
                    else str(exc) or type(exc).__name__)
            fail(f"{args.command}: out of resources ({what}): fewer threads (--writers, "
                 f"--threads), or raise the limits (ulimit -u, ulimit -v, the cgroup's pids.max)",
                 EXIT_FAILURE)
        if isinstance(exc, (SyscallError, OSError)):
            fail(f"{args.command}: {_describe_oserror(exc)}", EXIT_FAILURE)
        if isinstance(exc, PvpatchError):
            # pvpatch refused the request (a bad configuration, a page another hostd owns, ...):
            # the message names the thing at fault.
            fail(f"{args.command}: {exc}", EXIT_USAGE)
        raise  # a bug: keep the traceback
    return EXIT_FAILURE  # not reached: fail() exits

