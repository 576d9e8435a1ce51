"""One validation layer for every number and path the `pvpatch` command takes.

Each function here returns an argparse ``type=``: it converts the text, checks it (finite, in
range, not empty, writable) and raises ``argparse.ArgumentTypeError`` with a message that says
what is allowed.  argparse names the option, and ``cli.Parser.error`` prints the one line
``pvpatch: error: argument --threads: ...`` and exits 2, before anything has run.  Output files
are checked the same way, so a run of minutes is never lost to a path that cannot be written.
"""
from __future__ import annotations

import argparse
import math
import os

_Err = argparse.ArgumentTypeError


def _fmt(x: float) -> str:
    return f"{x:g}"


def integer(lo: int, hi: int, *, zero: str | None = None):
    """An integer in [lo, hi]; `zero` (if given) documents a 0 that means a default."""
    def parse(text: str) -> int:
        try:
            v = int(text, 0) if text.strip().lower().startswith(("0x", "0o", "0b")) else int(text)
        except ValueError:
            try:  # 1e6 is a fine way to write a million
                f = float(text)
            except ValueError:
                f = math.nan
            if not (math.isfinite(f) and f.is_integer()):
                raise _Err(f"{text!r} is not an integer") from None
            v = int(f)
        if not lo <= v <= hi:
            extra = f" ({zero})" if zero and lo == 0 else ""
            raise _Err(f"{v} is out of range: must be {lo}..{hi}{extra}")
        return v
    parse.__name__ = "integer"
    return parse


def number(lo: float, hi: float, *, lo_open: bool = False, unit: str = ""):
    """A finite float in [lo, hi] (or (lo, hi] with lo_open).  nan and inf are refused by name:
    a nan compares false with every bound and would slip through a plain range check."""
    u = f" {unit}" if unit else ""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise _Err(f"{text!r} is not a number") from None
        if not math.isfinite(v):
            raise _Err(f"{text} is not a finite number")
        if (v <= lo if lo_open else v < lo) or v > hi:
            low = f"> {_fmt(lo)}" if lo_open else f">= {_fmt(lo)}"
            raise _Err(f"{_fmt(v)}{u} is out of range: must be {low} and <= {_fmt(hi)}{u}")
        return v
    parse.__name__ = "number"
    return parse


def seconds(lo: float, hi: float, *, lo_open: bool = False):
    return number(lo, hi, lo_open=lo_open, unit="s")


def port(text: str) -> int:
    """A TCP port: 0 (pick a free one) to 65535."""
    return integer(0, 65535, zero="0: pick a free port")(text)


def nonempty(what: str):
    """Any non-empty text (a path that a later step opens and reports on itself)."""
    def parse(text: str) -> str:
        if not text.strip():
            raise _Err(f"empty {what}")
        return text
    parse.__name__ = "text"
    return parse


def output_file(*suffixes: str):
    """A file the run will write at its end: checked now by creating it (and removing it again
    if it did not exist), so that the run is not lost to a bad path.  `suffixes`, if given, are
    the accepted extensions."""
    def parse(text: str) -> str:
        if not text.strip():
            raise _Err("empty file name")
        if suffixes and not text.lower().endswith(suffixes):
            raise _Err(f"{text}: give a file name ending in {' or '.join(suffixes)}")
        if os.path.isdir(text):
            raise _Err(f"{text} is a directory")
        existed = os.path.exists(text)
        try:
            # Append mode: an existing file is neither truncated nor changed.
            with open(text, "ab"):
                pass
        except OSError as exc:
            raise _Err(f"{text}: cannot be written: {exc.strerror}") from None
        if not existed:
            try:
                os.unlink(text)
            except OSError:
                pass
        return text
    parse.__name__ = "file"
    return parse
