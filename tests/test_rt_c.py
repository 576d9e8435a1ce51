"""The runtime in a process without Python: tests/c/rt_switch.c, built from RT_SOURCES alone,
registers a module built with pvpatch.h (pvrt_register), switches its group thousands of times
(pvrt_switch) while threads call its sites, and checks every result, the commit read from the
bytes (pvrt_current, pvrt_group_site_bytes_match), the op slots, and the refusal of bad names.
The program bounds its own waits; the timeout here only reports a hang."""
from __future__ import annotations

import os
import subprocess

import pytest

from test_rt_build import CC, CORE, INCLUDE, ROOT, rt_sources

pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler on PATH")


@pytest.fixture(scope="module")
def rt_switch(tmp_path_factory):
    exe = tmp_path_factory.mktemp("rt") / "rt_switch"
    r = subprocess.run([CC, "-O2", "-std=gnu11", "-Wall", "-Werror", "-Wno-unused-parameter",
                        f"-I{INCLUDE}", f"-I{CORE}", str(ROOT / "tests" / "c" / "rt_switch.c"),
                        *map(str, rt_sources()), "-o", str(exe), "-lpthread", "-ldl"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return exe


def run(exe, *args, env=None):
    try:
        return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True,
                              timeout=240, env=env)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"rt_switch {args} hung; output so far: {exc.stdout!r} {exc.stderr!r}")


def test_links_without_python(rt_switch):
    out = subprocess.run(["ldd", str(rt_switch)], capture_output=True, text=True).stdout
    assert "python" not in out.lower(), out


def test_switch_thousands_of_times_under_threads(rt_switch):
    r = run(rt_switch, 3000, 4)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 wrong" in r.stdout, r.stdout
    # 3000 switches of 5 sites each, every one a real batch
    assert "15000 sites patched" in r.stdout, r.stdout


def test_switch_without_threads(rt_switch):
    r = run(rt_switch, 50, 0)
    assert r.returncode == 0, r.stdout + r.stderr


def test_alias_writer_path(rt_switch):
    # The writer's fallback (an rw- alias of a memfd) serves the runtime the same way.
    r = run(rt_switch, 600, 2, env=dict(os.environ, PVPATCH_WRITER="alias"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 wrong" in r.stdout, r.stdout
