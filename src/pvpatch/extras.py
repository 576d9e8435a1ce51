"""Optional dependencies (the package's extras) and the one-line hint when one is missing.

pvpatch installs with pyelftools and prometheus-client only; plotting (matplotlib) and
disassembly (capstone) are the extras ``pvpatch[plot]`` and ``pvpatch[disasm]``.
"""
from __future__ import annotations

import importlib
import importlib.util

from .errors import PvpatchError

EXTRAS = {"matplotlib": "plot", "capstone": "disasm"}


class MissingExtra(PvpatchError, ImportError):
    """A feature needs an optional dependency that is not installed; the message says which
    extra to install."""


def hint(module: str, feature: str) -> str:
    extra = EXTRAS[module]
    return (f"{feature} needs {module}, which is not installed: pip install "
            f"'pvpatch[{extra}]' (or pip install {module})")


def available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def require(module: str, feature: str):
    """Import and return `module`, or raise MissingExtra with the install hint."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(hint(module, feature)) from None
