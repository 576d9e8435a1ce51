"""pvpatch: runtime paravirt patching in user space.

Op groups with several implementations, called from native code through patchable call sites,
switched while threads run them::

    import pvpatch
    pvpatch.runtime_patch({"selftest": "pv"})

Importing pvpatch registers its own C core (the `selftest` group and, with it, every group the
core declares) and patches its sites to their current variants.  A build that needs only the
header imports `pvpatch_build` instead, which does none of that (docs/writing-an-extension.md).
C extensions reach pvpatch through the `_C_API` capsule (docs/extensions.md, "The C API").
"""
from __future__ import annotations

from pvpatch_build import get_include  # side-effect free: extensions' builds import only it

from . import _core
from .errors import (ArgumentError, BatchRefused, ElfError, PvpatchError, RegistryError,
                     SiteError, SyscallError)
from .cpufeatures import features, mask_features, unmask_features
from .run import preload_path
from .patcher import (current, events, register_desc, register_module, registry,
                      runtime_patch, set_transition, unregister_module)

__version__ = "0.1.0"
_CORE_ABI = 1

if getattr(_core, "ABI", None) != _CORE_ABI:  # pragma: no cover - a stale build
    raise ImportError(f"pvpatch._core ABI {getattr(_core, 'ABI', None)} does not match the "
                      f"Python package ({_CORE_ABI}); reinstall: pip install --force-reinstall .")


core_module = register_module(_core)

#: The C API for extensions (include/pvpatch.h: pvpatch_import_api()), exported only once the
#: core is registered, so that no C caller can switch or lock before the core's sites are live.
_C_API = _core._C_API

from . import locks  # noqa: E402  (the lock group owns its transitions: docs/locks.md)


def auto(hints_path: str | None = None, **kwargs):
    """Start the guest side of host hints (notifier, policy, worker) and return its handle;
    see pvpatch.hints.guest.auto."""
    from .hints.guest import auto as _auto
    return _auto(hints_path, **kwargs)


__all__ = ["auto", "ArgumentError", "BatchRefused", "ElfError", "PvpatchError", "RegistryError",
           "SiteError", "SyscallError", "current", "events", "features", "get_include",
           "mask_features", "preload_path", "register_desc", "register_module", "registry", "runtime_patch",
           "set_transition", "unmask_features", "unregister_module", "core_module"]
