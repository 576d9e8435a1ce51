"""Build the C core. Everything else lives in pyproject.toml."""
from setuptools import Extension, setup

CORE_SOURCES = [
    "src/pvpatch/_core/module.c",
    "src/pvpatch/_core/poke.c",
    "src/pvpatch/_core/writer.c",
    "src/pvpatch/_core/selftest_sites.c",
    "src/pvpatch/_core/selftest.c",
    "src/pvpatch/_core/cpuid.c",
    "src/pvpatch/_core/locks.c",
    "src/pvpatch/_core/lock_sites.c",
    "src/pvpatch/_core/torture.c",
    "src/pvpatch/_core/forktest.c",
]

setup(
    ext_modules=[
        Extension(
            "pvpatch._core",
            sources=CORE_SOURCES,
            include_dirs=["src/pvpatch/include", "src/pvpatch/_core"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                "-fno-strict-aliasing", "-fvisibility=hidden"],
            libraries=["pthread"],
        )
    ]
)
