"""CPU features for feature-gated inline templates: detection, policy masks, the public calls.

An implementation may name CPU features its inline template needs (PVPATCH_IMPL_NEEDS_* in
include/pvpatch.h), as the kernel's ALTERNATIVE() names an X86_FEATURE (arch/x86/kernel/
alternative.c): the template is rendered only where the CPU has them, else the site calls the
implementation's function.  Unlike the kernel, pvpatch re-evaluates the choice while the process
runs: policy can mask a feature (a fleet turning off an instruction with an erratum, say), and
every affected site is re-rendered in one batch of the ordinary protocol (docs/protocol.md),
safe for threads running the sites.  A group's variant never changes here, only how its
implementations are rendered.

Detection is CPUID (Intel SDM vol. 2A, "CPUID"; AMD APM vol. 3, appendix E); for AVX2 and
AVX-512 it also needs the OS to save the registers (XGETBV, XCR0), as the kernel and glibc check.
"""
from __future__ import annotations

from . import _core
from .descriptor import IMPL_NEEDS, feature_names
from .errors import PvpatchError

def _detect() -> int:
    """The IMPL_NEEDS bits of this CPU and OS, by the C runtime's detection (plan.c), the one
    a process without Python uses too."""
    return _core.cpu_features()


_detected = _detect()
_masked = 0


def bit(name: str) -> int:
    try:
        return IMPL_NEEDS[name]
    except KeyError:
        raise PvpatchError(f"unknown CPU feature {name!r}; known: "
                           f"{', '.join(IMPL_NEEDS)}") from None


def detected_bits() -> int:
    return _detected


def masked_bits() -> int:
    return _masked


def effective_bits() -> int:
    return _detected & ~_masked


def features() -> dict[str, list[str]]:
    """The CPU features templates may need: {"detected": [...] (this CPU and OS), "masked":
    [...] (by policy), "effective": [...] (detected and not masked: what templates may use)}."""
    return {"detected": feature_names(_detected), "masked": feature_names(_masked),
            "effective": feature_names(effective_bits())}


def _bits(names) -> int:
    if isinstance(names, str):
        names = [names]
    out = 0
    for n in names:
        out |= bit(n)
    return out


def _set_mask(mask: int):
    """Make `mask` the masked set and re-render every affected site in one batch; the mask
    changes only if the batch is applied (a refused batch changes nothing)."""
    global _masked
    from . import patcher
    patcher._check_not_reentered("mask_features/unmask_features")
    with patcher._lock:
        try:
            return patcher.rerender(_detected & ~mask)
        finally:
            # Committed (even if a late sync failed after the sites were whole): the mask
            # follows what is in memory.
            if patcher.registry.effective == _detected & ~mask:
                _masked = mask
                _core.set_feature_mask(mask)  # what the C runtime renders with


def mask_features(names) -> object:
    """Stop templates from using these CPU features (e.g. {"popcnt"}): every site rendering a
    template that needs one becomes a call to its implementation's function, in one batch,
    while threads run the sites.  Returns the PatchEvent.  Unknown names raise and change
    nothing."""
    return _set_mask(_masked | _bits(names))


def unmask_features(names) -> object:
    """Undo mask_features for these features: sites go back to their templates where the CPU
    has every feature they need."""
    return _set_mask(_masked & ~_bits(names))
