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
CORE_HEADERS = sorted(glob.glob("src/pvpatch/_core/*.h") + glob.glob("src/pvpatch/include/*.h")
                      + glob.glob("src/pvpatch/preload/*.h"))


# libpvpatch-preload.so (docs/run.md): the preload library, plain C, never linked with
# libpython.  Its own files, the lock algorithms, and the Python-free runtime it registers and
# switches its sites with (see preload_config()).
PRELOAD_SOURCES = sorted(glob.glob("src/pvpatch/preload/*.c")) + ["src/pvpatch/_core/locks.c"]
PRELOAD_NAME = "libpvpatch-preload.so"


def preload_config():
    """(sources, macros): the preload library's files, the lock algorithms, and the whole
    Python-free runtime (mechanism, planner, agent) it registers and switches its sites with."""
    return PRELOAD_SOURCES + RT_SOURCES + ["src/pvpatch/_core/agent.c"], []


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
        self.build_preload()

    def preload_path(self) -> str:
        # Next to pvpatch._core, wherever this build puts it (build/lib..., or src/ in place).
        return os.path.join(os.path.dirname(self.get_ext_fullpath("pvpatch._core")), PRELOAD_NAME)

    def build_preload(self):
        sources, macros = preload_config()
        out = self._preload_built = self.preload_path()
        deps = sources + CORE_HEADERS + ["src/pvpatch/preload/exports.map", "setup.py"]
        if not self.force and os.path.exists(out) and all(
                os.path.getmtime(d) <= os.path.getmtime(out) for d in deps):
            return
        objects = self.compiler.compile(
            sources, output_dir=os.path.join(self.build_temp, "preload"), macros=macros,
            include_dirs=["src/pvpatch/include", "src/pvpatch/_core", "src/pvpatch/preload"],
            extra_postargs=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                            "-fno-strict-aliasing", "-fvisibility=hidden", "-fPIC", "-pthread"])
        os.makedirs(os.path.dirname(out), exist_ok=True)
        # The compiler driver links, not Python's LDSHARED (which adds Python's library path and
        # rpath): the library must load in any process, with or without Python.
        cc = self.compiler.compiler_so[0]
        self.compiler.spawn([cc, "-shared", "-pthread", "-Wl,-z,defs", "-Wl,-z,now",
                             "-Wl,--version-script=src/pvpatch/preload/exports.map",
                             *objects, "-o", out, "-ldl", "-lm"])

    def copy_extensions_to_source(self):
        # An editable install (pip install -e) builds elsewhere and copies the extensions into
        # the source tree; the preload library goes with them.
        super().copy_extensions_to_source()
        pkg = self.get_finalized_command("build_py").get_package_dir("pvpatch")
        built = getattr(self, "_preload_built", None) or self.preload_path()
        dst = os.path.join(pkg, PRELOAD_NAME)
        if os.path.abspath(built) != os.path.abspath(dst):
            self.copy_file(built, dst, level=self.verbose)

    def get_outputs(self):
        return super().get_outputs() + [self.preload_path()]


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
