"""pvpatch: runtime paravirt patching in user space.

Op groups with several implementations, called from native code through patchable call sites,
switched while threads run them::

    import pvpatch
    pvpatch.runtime_patch({"selftest": "pv"})

Importing pvpatch registers its own C core (the `selftest` group and, with it, every group the
core declares) and patches its sites to their current variants.
"""
from __future__ import annotations

import os

from . import _core
from .errors import (ArgumentError, BatchRefused, ElfError, PvpatchError, RegistryError,
                     SiteError, SyscallError)
from .patcher import (current, events, register_desc, register_module, registry,
                      runtime_patch, set_transition, unregister_module)

__version__ = "0.1.0"
_CORE_ABI = 1

if getattr(_core, "ABI", None) != _CORE_ABI:  # pragma: no cover - a stale build
    raise ImportError(f"pvpatch._core ABI {getattr(_core, 'ABI', None)} does not match the "
                      f"Python package ({_CORE_ABI}); reinstall: pip install --force-reinstall .")


def get_include() -> str:
    """The directory holding pvpatch.h, for extensions that declare their own sites."""
    return os.path.join(os.path.dirname(__file__), "include")


core_module = register_module(_core)

from . import locks  # noqa: E402  (the lock group owns its transitions: docs/locks.md)


def auto(hints_path: str | None = None, **kwargs):
    """Start the guest side of host hints (notifier, policy, worker) and return its handle;
    see pvpatch.hints.guest.auto."""
    from .hints.guest import auto as _auto
    return _auto(hints_path, **kwargs)


__all__ = ["auto", "ArgumentError", "BatchRefused", "ElfError", "PvpatchError", "RegistryError",
           "SiteError", "SyscallError", "current", "events", "get_include", "register_desc",
           "register_module", "registry", "runtime_patch", "set_transition", "unregister_module",
           "core_module"]
