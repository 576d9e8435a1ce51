"""The public header, used by an extension that is not pvpatch: built with gcc, loaded,
registered, switched, and its ELF file read."""
import importlib.util
import os
import subprocess
import sys
import sysconfig

import pytest

import pvpatch
from pvpatch import elfsites
from pvpatch.disasm import decode

HERE = os.path.dirname(__file__)
SOURCE = os.path.join(HERE, "..", "examples", "demo_ext", "demo.c")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / ("demo" + sysconfig.get_config_var("EXT_SUFFIX"))
    cmd = ["gcc", "-O2", "-shared", "-fPIC", "-fvisibility=hidden", "-Wall", "-Werror",
           f"-I{sysconfig.get_paths()['include']}", f"-I{pvpatch.get_include()}", SOURCE,
           "-o", str(out)]
    subprocess.run(cmd, check=True, timeout=120)
    spec = importlib.util.spec_from_file_location("demo", out)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.scale(21) == 42  # the default rendering works before registration
    pvpatch.register_module(mod)
    yield mod, str(out)
    pvpatch.runtime_patch({"demo": "native"})


def test_get_include_holds_the_header():
    assert os.path.isfile(os.path.join(pvpatch.get_include(), "pvpatch.h"))


def test_registered_and_switched(demo):
    mod, _ = demo
    m = pvpatch.registry.module("demo")
    assert {(s.op, s.length) for s in m.sites} == {("scale", 6), ("clear", 8)}
    clear = next(s for s in m.sites if s.op == "clear")
    assert decode(pvpatch.patcher.site_bytes(clear), clear.addr)[0][2].replace("%cs:", "") \
        == "movq $0, (%rdi)"
    assert mod.scale(21) == 42 and mod.clear(5) == 0
    pvpatch.runtime_patch({"demo": "pv"})
    assert mod.scale(21) == 63 and mod.clear(5) == -1
    pvpatch.runtime_patch({"demo": "native"})
    assert mod.scale(21) == 42 and mod.clear(5) == 0


def test_elf_and_live_agree(demo):
    _, path = demo
    m = pvpatch.registry.module("demo")
    e = elfsites.read_elf(path)
    base = elfsites.load_base(path, m.text[0])
    assert sorted((base + s.vaddr, s.length, s.group, s.op) for s in e.sites) == \
        sorted((s.addr, s.length, s.group, s.op) for s in m.sites)


def test_unregistered_object_is_refused():
    with pytest.raises(pvpatch.PvpatchError, match="exports no __pvpatch__"):
        pvpatch.register_module(sys)


def test_elf_without_sites_is_a_clear_error(tmp_path):
    with pytest.raises(pvpatch.ElfError, match="no pvpatch_module symbol"):
        elfsites.read_elf(sys.executable)
    bad = tmp_path / "garbage.so"
    bad.write_bytes(b"\x7fELF" + os.urandom(200))
    with pytest.raises(pvpatch.ElfError):
        elfsites.read_elf(str(bad))
