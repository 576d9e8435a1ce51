"""pvexample: an extension with an op group of its own, `example`.

Importing the package registers its extension module with pvpatch, so every site is patched to
the group's current variant before any caller runs one::

    import pvexample, pvpatch
    pvexample.add(2, 3)                          # 5, through an inline `lea` site
    pvpatch.runtime_patch({"example": "checked"})
    pvexample.add(2**62, 2**62)                  # saturates at 2**63 - 1
"""
import pvpatch

from . import _ext
from ._ext import (add, boot_tag, calls, clear, current, locked_count, note, sum_to,  # noqa: F401
                   switch)

VARIANTS = ("fast", "checked", "counting")

# Registration renders every site (runtime and boot) as the group's current variant.
module = pvpatch.register_module(_ext)
