"""The package as an index ships it: what setup.py and pyproject.toml promise.

(The sdist and the wheel themselves are built, installed in fresh environments and tested by
.ci/run.)"""
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (ROOT / "setup.py").exists(),
                                reason="needs the source tree (setup.py)")


def test_every_header_is_a_dependency_of_the_core():
    """An edited header rebuilds the core: every header in the tree is in depends=."""
    code = ("import runpy, setuptools, sys; captured = {}; "
            "setuptools.setup = lambda **kw: captured.update(kw); "
            "runpy.run_path('setup.py'); "
            "print('\\n'.join(captured['ext_modules'][0].depends))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 0, p.stderr
    depends = set(p.stdout.split())
    headers = {str(h.relative_to(ROOT)) for h in (ROOT / "src").rglob("*.h")}
    assert headers and headers <= depends, headers - depends


def test_metadata_license_and_extras():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = meta["project"]
    assert project["license"] == "GPL-2.0-only"
    assert "GNU GENERAL PUBLIC LICENSE" in (ROOT / "LICENSE").read_text()[:200]
    assert "Version 2, June 1991" in (ROOT / "LICENSE").read_text()[:200]
    build = " ".join(meta["build-system"]["requires"])
    assert re.search(r"setuptools>=(7[7-9]|[89]\d)", build)  # SPDX license strings
    deps = " ".join(project["dependencies"])
    assert "matplotlib" not in deps and "capstone" not in deps
    assert project["optional-dependencies"]["plot"] == ["matplotlib>=3.7"]
    assert project["optional-dependencies"]["disasm"] == ["capstone>=5"]
    assert meta["tool"]["setuptools"]["include-package-data"] is False  # no C in the wheel
    cibw = meta["tool"]["cibuildwheel"]
    assert "manylinux_x86_64" in cibw["build"] and cibw["test-command"]


def test_no_compiler_is_one_clear_line(tmp_path):
    """Without a C compiler the build says so, and what to do, instead of setuptools' page of
    noise ending in "No such file or directory: 'gcc'"."""
    env = dict(os.environ, CC="/nonexistent/bin/cc")
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                        str(tmp_path), str(ROOT)], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode != 0
    assert ("pvpatch: error: no C compiler found ('/nonexistent/bin/cc' is not on PATH)"
            in p.stdout + p.stderr), p.stdout + p.stderr
    assert "install gcc" in p.stdout + p.stderr
    assert not list(tmp_path.glob("*.whl"))
