"""The extension module; everything else is in pyproject.toml.

pvpatch_build, installed with pvpatch, gives the header's directory without importing pvpatch
(which would register pvpatch's core and patch it inside the build process)."""
from setuptools import setup

import pvpatch_build

setup(
    ext_modules=[
        pvpatch_build.extension(
            "pvexample._ext",
            sources=["src/pvexample/_ext/ops.c", "src/pvexample/_ext/kernels.c",
                     "src/pvexample/_ext/module.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            libraries=["pthread"],
        )
    ]
)
