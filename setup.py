"""Build the C core. Everything else lives in pyproject.toml."""
import glob
import os
import shutil
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# The runtime without Python (src/pvpatch/_core/rt.h): compiled into the extension and into
# programs that never load Python.  None of these includes Python.h (tests/test_rt_build.py
# compiles and links them without Python's headers or library).
RT_SOURCES = [
    "src/pvpatch/_core/poke.c",
    "src/pvpatch/_core/writer.c",
    "src/pvpatch/_core/cpuid.c",
    "src/pvpatch/_core/masks.c",
    "src/pvpatch/_core/plan.c",
    "src/pvpatch/_core/rt.c",
]
CORE_SOURCES = RT_SOURCES + [
    "src/pvpatch/_core/module.c",
    "src/pvpatch/_core/poke_py.c",
    "src/pvpatch/_core/rt_py.c",
    "src/pvpatch/_core/selftest_sites.c",
    "src/pvpatch/_core/selftest.c",
    "src/pvpatch/_core/cpuid_py.c",
    "src/pvpatch/_core/locks.c",
    "src/pvpatch/_core/lock_sites.c",
    "src/pvpatch/_core/torture.c",
    "src/pvpatch/_core/bench_call.c",
    "src/pvpatch/_core/traptest.c",
    "src/pvpatch/_core/masks_py.c",
    "src/pvpatch/_core/forktest.c",
    "src/pvpatch/_core/bits_sites.c",
    "src/pvpatch/_core/capi.c",
    "src/pvpatch/_core/agent.c",
    "src/pvpatch/_core/agent_py.c",
]
# Every header any source may include: an edited header rebuilds the core instead of leaving a
# stale .so behind.  A glob, so that a new header is covered without touching this file.
CORE_HEADERS = sorted(glob.glob("src/pvpatch/_core/*.h") + glob.glob("src/pvpatch/include/*.h"))


class checked_build_ext(build_ext):
    """build_ext that says in one line what is missing (a C compiler, Python's headers) rather
    than letting the compiler fail with a page of noise."""

    def build_extensions(self):
        cc = getattr(self.compiler, "compiler_so", None) or ["cc"]
        if not shutil.which(cc[0]):
            raise SystemExit(
                f"pvpatch: error: no C compiler found ({cc[0]!r} is not on PATH); pvpatch "
                f"builds a small C core: install gcc (Debian/Ubuntu: apt-get install gcc, "
                f"Fedora: dnf install gcc), or install a prebuilt manylinux wheel")
        inc = sysconfig.get_paths()["include"]
        if not os.path.exists(os.path.join(inc, "Python.h")):
            raise SystemExit(
                f"pvpatch: error: Python's C headers are missing (no Python.h in {inc}); "
                f"install them (Debian/Ubuntu: apt-get install python3-dev, Fedora: dnf "
                f"install python3-devel), or install a prebuilt manylinux wheel")
        super().build_extensions()


setup(
    cmdclass={"build_ext": checked_build_ext},
    ext_modules=[
        Extension(
            "pvpatch._core",
            sources=CORE_SOURCES,
            depends=CORE_HEADERS,
            include_dirs=["src/pvpatch/include", "src/pvpatch/_core"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                "-fno-strict-aliasing", "-fvisibility=hidden"],
            libraries=["pthread", "dl"],
        )
    ]
)
