"""The C API (include/pvpatch.h, "the C API"; src/pvpatch/_core/capi.c) from an extension built
with gcc: switching and querying groups with and without the GIL, from a thread Python never
saw, and pvpatch_lock_t going through the core's switchable lock sites."""
import ctypes
import errno
import importlib.util
import os
import struct
import subprocess
import sysconfig
import textwrap

import pytest

import pvpatch
from pvpatch import _core

SOURCE = os.path.join(os.path.dirname(__file__), "capi_ext", "capi_test.c")


@pytest.fixture(scope="module")
def ext(tmp_path_factory):
    out = tmp_path_factory.mktemp("capi") / ("capi_test" + sysconfig.get_config_var("EXT_SUFFIX"))
    cmd = ["gcc", "-O2", "-shared", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wextra",
           "-Wno-unused-parameter", "-Werror", "-pthread",
           f"-I{sysconfig.get_paths()['include']}", f"-I{pvpatch.get_include()}", SOURCE,
           "-o", str(out)]
    subprocess.run(cmd, check=True, timeout=120)
    spec = importlib.util.spec_from_file_location("capi_test", out)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    yield mod
    pvpatch.runtime_patch({"selftest": "native", "lock": "native"})


def test_capsule_is_versioned_table():
    """The capsule holds {version, size, 6 function pointers into the core's text}."""
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    addr = get(pvpatch._C_API, b"pvpatch._C_API")
    version, size = struct.unpack("<II", ctypes.string_at(addr, 8))
    assert (version, size) == (1, 8 + 6 * 8)
    fns = struct.unpack("<6Q", ctypes.string_at(addr + 8, 48))
    core_path = _core.text_segment(fns[0])[2]
    assert core_path == _core.__file__
    assert all(_core.text_segment(f)[2] == core_path for f in fns)
    # The last entry, unregister: a descriptor that was never registered is refused.
    unregister = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)(fns[5])
    bogus = ctypes.create_string_buffer(64)
    assert unregister(ctypes.addressof(bogus)) == -1


def test_switch_and_current_with_the_gil(ext):
    ext.switch("selftest", "pv")
    assert pvpatch.current()["selftest"] == "pv" == ext.current("selftest")
    ext.switch("selftest", "native")
    assert ext.current("selftest") == "native"


def test_errors_with_the_gil_are_exceptions(ext):
    with pytest.raises(pvpatch.RegistryError, match="unknown group 'nosuch'"):
        ext.switch("nosuch", "pv")
    with pytest.raises(pvpatch.RegistryError, match="unknown variant of group 'selftest' 'x'"):
        ext.switch("selftest", "x")
    with pytest.raises(ValueError, match="group is NULL"):
        ext.switch_null(0)
    with pytest.raises(ValueError, match="variant is NULL"):
        ext.switch_null(1)
    with pytest.raises(pvpatch.RegistryError, match="unknown group 'nosuch'"):
        ext.current("nosuch")
    with pytest.raises(ValueError, match="needs 7 bytes, buf has 3"):
        ext.current("selftest", 3)
    assert pvpatch.current()["selftest"] == "native"  # nothing changed


def test_without_the_gil(ext):
    assert ext.switch_nogil("selftest", "pv") == (0, 0)
    assert pvpatch.current()["selftest"] == "pv"
    assert ext.switch_nogil("selftest", "bogus") == (-1, errno.EINVAL)
    assert pvpatch.current()["selftest"] == "pv"
    assert ext.switch_nogil("selftest", "native") == (0, 0)


def test_from_a_foreign_thread(ext):
    assert ext.switch_from_thread("selftest", "pv") == (0, 0, "pv")
    assert pvpatch.current()["selftest"] == "pv"
    assert ext.switch_from_thread("nosuch", "pv") == (-1, errno.EINVAL, None)
    assert ext.switch_from_thread("selftest", "native") == (0, 0, "native")


def test_trylock(ext):
    assert ext.trylock_pair() == (1, 0, 1)


@pytest.mark.parametrize("variant,sleeps", [("native", False), ("pv", True)])
def test_lock_follows_the_lock_group(ext, variant, sleeps):
    """A waiter on an extension's pvpatch_lock_t behaves as the lock group's current variant:
    under pv it sleeps on the lock word once its spin bound is spent, under native it never
    sleeps.  So the extension's lock calls run the core's switchable sites."""
    pvpatch.runtime_patch({"lock": variant})
    before = _core.lock_stats()["head_sleep"]
    # A loaded machine may not run the waiter within one hold: under pv, hold longer and
    # retry until it slept (at most 3.3 s); under native, any hold must see no sleep.
    for ms in ((300, 1000, 2000) if sleeps else (300,)):
        ext.hold_with_waiter(ms)
        slept = _core.lock_stats()["head_sleep"] - before
        if slept:
            break
    pvpatch.runtime_patch({"lock": "native"})
    assert (slept > 0) == sleeps, (variant, slept)


def test_lock_stress_across_switches(ext):
    """8 threads lock one pvpatch_lock_t while the C caller switches the lock group through
    pv, hybrid, native, pv, native, ... from C (300 times, and on until each thread has locked
    2000 times): every increment counted, nobody ever inside together, no lost wake-up."""
    pvpatch.runtime_patch({"lock": "native"})
    late0 = _core.lock_stats()["late_wakeups"]
    r = ext.lock_stress(8, 300, 2000, ("pv", "hybrid", "native", "pv", "native"), 120.0)
    state = {"result": r, "threads": _core.lock_threads(True), "stats": _core.lock_stats()}
    assert not r["hung"], state
    assert r["threads"] == 8, state
    assert r["failures"] == 0, state
    assert r["counter"] == r["expected"] > 0, state
    assert r["switch_errors"] == 0, state
    assert r["switches"] >= 300 and r["counter"] >= 8 * 2000, state
    assert _core.lock_stats()["late_wakeups"] == late0, state
    pvpatch.runtime_patch({"lock": "native"})


def test_import_api_refuses_another_version(tmp_path):
    """An extension built against a header of another API version fails to import with an
    ImportError that says to rebuild (the header is this one with the version changed)."""
    inc = tmp_path / "inc"
    inc.mkdir()
    header = open(os.path.join(pvpatch.get_include(), "pvpatch.h")).read()
    assert "#define PVPATCH_API_VERSION 1\n" in header
    (inc / "pvpatch.h").write_text(header.replace("#define PVPATCH_API_VERSION 1\n",
                                                  "#define PVPATCH_API_VERSION 2\n"))
    src = tmp_path / "apiv2.c"
    src.write_text(textwrap.dedent("""
        #include <Python.h>
        #include "pvpatch.h"
        static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, .m_name = "apiv2", .m_size = -1};
        PyMODINIT_FUNC PyInit_apiv2(void)
        {
            if (pvpatch_import_api() < 0)
                return NULL;
            return PyModule_Create(&def);
        }
    """))
    out = tmp_path / ("apiv2" + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", f"-I{sysconfig.get_paths()['include']}",
                    f"-I{inc}", str(src), "-o", str(out)], check=True, timeout=120)
    spec = importlib.util.spec_from_file_location("apiv2", out)
    with pytest.raises(ImportError, match=r"pvpatch C API version 1 \(56 bytes\) is installed, "
                                          r"this extension was built against version 2 .*"
                                          r"rebuild it"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


def test_auto_switches_extension_locks(ext, tmp_path):
    """pvpatch.auto() with no hint page falls back to the safe default, lock -> pv, and an
    extension's pvpatch_lock_t follows: its waiter sleeps on the lock word."""
    pvpatch.runtime_patch({"lock": "native"})
    with pvpatch.auto(str(tmp_path / "no-page"), min_dwell_s=0.0, poll_s=0.05) as h:
        assert h.wait_events(1, 20.0), (h.decisions, h.events)
        assert pvpatch.current()["lock"] == "pv" == ext.current("lock")
        before = _core.lock_stats()["head_sleep"]
        for ms in (300, 1000, 2000):
            ext.hold_with_waiter(ms)
            if _core.lock_stats()["head_sleep"] > before:
                break
        assert _core.lock_stats()["head_sleep"] > before
    pvpatch.runtime_patch({"lock": "native"})
