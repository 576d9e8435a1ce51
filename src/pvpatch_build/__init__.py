"""Build-time helpers for C extensions that use pvpatch.h, importable with no side effects.

``import pvpatch`` registers pvpatch's C core and patches its sites (the package's documented
behaviour, which running code relies on).  A build needs none of that: it needs the header.
This module is installed with pvpatch, next to it, and never imports it, so an extension's
``setup.py`` can run under pip's build isolation with ``pvpatch`` in ``build-system.requires``::

    from setuptools import setup
    import pvpatch_build

    setup(ext_modules=[pvpatch_build.extension("mypkg._ext", ["src/a.c", "src/b.c"])])

``pvpatch.get_include()`` is this module's :func:`get_include`.
"""
from __future__ import annotations

import importlib.util
import os

__all__ = ["get_include", "extension", "CFLAGS"]

#: Compiler flags the header needs: none are required (docs/extensions.md, "Compiler flags").
#: These are what pvpatch builds its own core with, and what the examples use.
CFLAGS = ["-std=gnu11", "-fvisibility=hidden"]


def get_include() -> str:
    """The directory holding pvpatch.h.

    Found through the import system without executing the pvpatch package (find_spec of a
    top-level package runs no module code), so that editable and zipped-less installs work."""
    spec = importlib.util.find_spec("pvpatch")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("pvpatch_build: the pvpatch package is not installed next to it; "
                          "install pvpatch (pip install pvpatch)")
    for root in spec.submodule_search_locations:
        inc = os.path.join(root, "include")
        if os.path.isfile(os.path.join(inc, "pvpatch.h")):
            return inc
    raise ImportError(f"pvpatch_build: no include/pvpatch.h in the pvpatch package at "
                      f"{list(spec.submodule_search_locations)}; reinstall pvpatch")


def extension(name: str, sources: list[str], **kwargs):
    """A setuptools Extension for a module with pvpatch sites: pvpatch's include directory and
    CFLAGS added to what `kwargs` gives (include_dirs, extra_compile_args, ...)."""
    from setuptools import Extension  # only a build has setuptools

    kwargs["include_dirs"] = [*kwargs.get("include_dirs", []), get_include()]
    kwargs["extra_compile_args"] = [*CFLAGS, *kwargs.get("extra_compile_args", [])]
    return Extension(name, sources, **kwargs)
