"""The writer: registered text stays the object's own file mapping, the active path is reported,
and the fallback (an rw- alias that exists only during a batch) works when forced."""
import os
import subprocess
import sys
import textwrap

import pytest

import pvpatch
from pvpatch import _core, gen, wx


def _maps_line(addr):
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= addr < hi:
                return line.strip()
    return None


def test_status_names_the_path():
    st = _core.writer_status()
    assert st["path"] in ("proc-mem", "alias")
    if st["path"] == "alias" and not st["forced"]:
        assert st["probe_errno"] != 0 and st["probe_syscall"]  # says why


@pytest.mark.skipif(_core.writer_status()["path"] != "proc-mem",
                    reason="the kernel refuses /proc/self/mem writes here: the fallback is active")
def test_registered_text_stays_the_file_mapping(selftest_native):
    pvpatch.runtime_patch({"selftest": "pv"})
    site = pvpatch.core_module.sites[0].addr
    line = _maps_line(site)
    assert line.split()[1] == "r-xp", line
    assert line.endswith(os.path.basename(_core.__file__)), line  # not /memfd:...
    assert not any("pvpatch-text" in l for l in open("/proc/self/maps"))


def test_write_code_refuses_what_is_not_code():
    buf = bytearray(16)
    import ctypes
    addr = ctypes.addressof((ctypes.c_char * 16).from_buffer(buf))
    with pytest.raises(ValueError, match="not in a code range"):
        _core.write_code(addr, b"\x90")
    assert buf == bytearray(16)


FALLBACK = textwrap.dedent(r"""
    import os, sys
    import pvpatch
    from pvpatch import _core, gen, wx
    st = _core.writer_status()
    assert st["path"] == "alias" and st["forced"], st
    maps = open("/proc/self/maps").read()
    assert "pvpatch-text:pvpatch._core" in maps, "the text was not moved into a memfd"
    sampler = wx.Sampler(); sampler.start()
    for i in range(600):
        pvpatch.runtime_patch({"selftest": ("pv", "alt", "native")[i % 3]})
    samples, bad = sampler.stop()
    assert samples > 5 and bad == [], bad
    assert _core.selftest_call(0) == 0x1001
    # The alias exists only during a batch: none is mapped now.
    rw = [l for l in open("/proc/self/maps") if "pvpatch-text" in l and "rw" in l.split()[1]]
    assert rw == [], rw
    assert _core.writer_status()["alias_maps"] >= 600
    g = gen.generate(50, group="fb")
    pvpatch.register_desc(g.desc, text=g.text)
    pvpatch.runtime_patch({"fb": "pv"})
    assert g.call(7) == 0x1002
    pid = os.fork()
    if pid == 0:
        pvpatch.runtime_patch({"selftest": "alt"})
        os._exit(0 if _core.selftest_call(0) == 0x1003 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _core.selftest_call(0) == 0x1001  # the child's switch is its own
    print("fallback ok")
""")


def test_fallback_alias_path_when_forced():
    env = dict(os.environ, PVPATCH_WRITER="alias")
    out = subprocess.run([sys.executable, "-c", FALLBACK], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "fallback ok" in out.stdout


def test_unknown_writer_setting_is_a_clear_error():
    env = dict(os.environ, PVPATCH_WRITER="bogus")
    out = subprocess.run([sys.executable, "-c", "import pvpatch"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0
    assert "PVPATCH_WRITER" in out.stderr and "alias" in out.stderr


def test_generated_code_never_writable_and_executable(selftest_native):
    sampler = wx.Sampler()
    sampler.start()
    try:
        g = gen.generate(200, group="wxgen")
        pvpatch.register_desc(g.desc, text=g.text)
        for i in range(300):
            pvpatch.runtime_patch({"wxgen": ("pv", "alt", "native")[i % 3]})
    finally:
        samples, bad = sampler.stop()
    assert bad == [] and samples > 5
    assert g.call(3) == 0x1001


def test_fork_and_commit_tests_pass_on_the_fallback_path():
    """The fork story differs most between the paths (shared text must be copied under the
    batch lock); run those tests, and the commit storm, with the fallback forced."""
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PVPATCH_WRITER="alias")
    storm = "test_commit.py::test_selftest_group_survives_exceptions_anywhere"
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          os.path.join(here, "test_fork.py"), os.path.join(here, storm)],
                         env=env, capture_output=True, text=True, timeout=300, cwd=here)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "failed" not in out.stdout
