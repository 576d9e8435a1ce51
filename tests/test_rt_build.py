"""The runtime (src/pvpatch/_core/rt.h) builds without Python: every source setup.py lists in
RT_SOURCES compiles with `cc -c` and no Python include directory, and the objects link into a
shared object with --no-undefined against the C library alone, so that no Python symbol hides in
them.  This is what lets a program that never loads Python (the preload library, tests/c/) use
the same code as the extension."""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "src" / "pvpatch" / "_core"
INCLUDE = ROOT / "src" / "pvpatch" / "include"
CC = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler on PATH")


def rt_sources() -> list[Path]:
    """RT_SOURCES of setup.py, read without running it."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "RT_SOURCES"
                                                for t in node.targets):
            return [ROOT / p for p in ast.literal_eval(node.value)]
    raise AssertionError("setup.py defines no RT_SOURCES")


def test_rt_sources_are_listed_and_in_the_extension():
    srcs = rt_sources()
    names = {p.name for p in srcs}
    assert {"poke.c", "writer.c", "masks.c", "cpuid.c"} <= names, names
    for p in srcs:
        assert p.is_file(), p


def test_rt_sources_include_no_python_header():
    # A direct check, with a readable message, before the compiler's.
    for p in rt_sources():
        for inc in re.findall(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', p.read_text(), re.M):
            assert inc not in ("Python.h", "core.h"), f"{p.name} includes {inc}"
            if (CORE / inc).is_file():  # a local header: it must not pull Python in either
                text = (CORE / inc).read_text()
                assert not re.search(r'#\s*include\s*[<"](Python\.h|core\.h)[>"]', text), \
                    f"{p.name} includes {inc}, which includes Python"


def test_rt_compiles_and_links_without_python(tmp_path):
    objs = []
    for p in rt_sources():
        o = tmp_path / (p.stem + ".o")
        # No Python include directory: a Python.h anywhere in the chain fails here.
        r = subprocess.run([CC, "-c", "-O2", "-std=gnu11", "-fPIC", "-Wall", "-Werror",
                            "-Wno-unused-parameter", f"-I{INCLUDE}", f"-I{CORE}", str(p), "-o",
                            str(o)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"{p.name}:\n{r.stderr}"
        objs.append(str(o))
    so = tmp_path / "librt.so"
    r = subprocess.run([CC, "-shared", "-o", str(so), *objs, "-Wl,--no-undefined", "-lpthread",
                        "-ldl"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    nm = shutil.which("nm")
    if nm:
        undef = subprocess.run([nm, "-u", str(so)], capture_output=True, text=True).stdout
        assert not re.search(r"\bPy[A-Z_]", undef), undef
