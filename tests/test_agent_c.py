"""The guest agent in C, without Python: tests/c/agent_test.c runs src/pvpatch/_core/agent.c
against a real hint page it publishes itself (policy with an injected clock, validation, trust,
and the live thread: decisions, dwell, fallback on a garbage or untrusted page, retries, the
local judge's hysteresis)."""
from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORE = ROOT / "src/pvpatch/_core"


@pytest.fixture(scope="module")
def agent_test(tmp_path_factory):
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is needed to build tests/c/agent_test.c")
    exe = tmp_path_factory.mktemp("agent") / "agent_test"
    # No Python headers, no libpython: the agent must build and run alone.
    subprocess.run([gcc, "-O2", "-g", "-pthread", "-std=gnu11", "-Wall", "-Wextra", "-Werror",
                    "-Wno-unused-parameter", f"-I{CORE}", str(ROOT / "tests/c/agent_test.c"),
                    str(CORE / "agent.c"), "-lm", "-o", str(exe)], check=True)
    return exe


def test_agent_in_c_without_python(agent_test):
    p = subprocess.run([str(agent_test)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.rstrip().endswith("agent_test: ok"), \
        p.stdout[-4000:] + p.stderr[-2000:]


def test_agent_source_is_python_free():
    for name in ("agent.c", "agent.h"):
        text = (CORE / name).read_text()
        assert "#include <Python.h>" not in text and '#include "core.h"' not in text, name
