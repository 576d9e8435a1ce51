"""Module lifecycle (issue 9): unregister, unloading, registering twice, joining a group.

A plain shared library with sites (tests/c/lifecycle_lib.c, built with gcc) is loaded with
dlopen through ctypes, registered from its descriptor, switched, unregistered or unloaded with
dlclose.  The storm tests run in a child process, so that a crash is a reported failure.
"""
import ctypes
import json
import os
import shutil
import subprocess
import sys
import weakref

import pytest

import pvpatch
from pvpatch import _core, descriptor, x86

HERE = os.path.dirname(__file__)
SRC = os.path.join(HERE, "c", "lifecycle_lib.c")
ADD = {"native": 0, "pv": 1000, "alt": 2000}
MARK = {"native": 1, "pv": 2, "alt": 3}

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("lifecycle")
    built = {}

    def make(name, dtor=False, tag=""):
        key = (name, dtor, tag)
        if key not in built:
            out = str(out_dir / f"{name}{'_dtor' if dtor else ''}{tag}.so")
            cmd = ["gcc", "-O2", "-shared", "-fPIC", "-fvisibility=hidden", "-Wall", "-Werror",
                   f"-I{pvpatch.get_include()}", f'-DLC_NAME="{name}"', SRC, "-o", out]
            if dtor:
                cmd.insert(1, "-DLC_DTOR")
            subprocess.run(cmd, check=True, timeout=120)
            built[key] = out
        return built[key]
    return make


def load(path):
    lib = ctypes.CDLL(path)
    lib.lc_desc.restype = ctypes.c_void_p
    for f in ("lc_add", "lc_add8", "lc_add13"):
        getattr(lib, f).restype = ctypes.c_long
        getattr(lib, f).argtypes = [ctypes.c_long, ctypes.c_long]
    lib.lc_mark.restype = ctypes.c_long
    return lib


def results(lib):
    return {lib.lc_add(1, 2), lib.lc_add8(1, 2), lib.lc_add13(1, 2)}


def register(lib):
    return pvpatch.register_desc(descriptor.read_module(lib.lc_desc()))


def all_sites(mod):
    return mod.sites + mod.boot


def holds_default(mod):
    return all(_core.read(s.addr, s.length) == x86.default_site(
        s.addr, mod.desc.groups[s.record.group].ops[s.record.op].slot, s.length)
        for s in all_sites(mod))


@pytest.fixture
def clean():
    """Unregister every lc module a test left behind."""
    yield
    for m in [m for m in pvpatch.registry.modules if m.name.startswith("lc_")]:
        try:
            pvpatch.unregister_module(m)
        except pvpatch.PvpatchError:
            pass


def test_unregister_renders_defaults_and_forgets(build, clean):
    lib = load(build("lc_u1"))
    mod = register(lib)
    pvpatch.runtime_patch({"lc": "pv"})
    assert results(lib) == {3 + ADD["pv"]}
    sites = all_sites(mod)
    pvpatch.unregister_module("lc_u1")
    assert "lc_u1" not in [m.name for m in pvpatch.registry.modules]
    assert holds_default(mod)  # boot sites included
    # The default calls *slot, which holds the group's variant at the unregister.
    assert results(lib) == {3 + ADD["pv"]}
    before = [_core.read(s.addr, s.length) for s in sites]
    pvpatch.runtime_patch({"lc": "alt"})
    pvpatch.runtime_patch({"lc": "native"})
    assert [_core.read(s.addr, s.length) for s in sites] == before
    assert results(lib) == {3 + ADD["pv"]}
    # The C core retired the sites too: a batch naming one drops it unread, writes nothing.
    s = mod.sites[0]
    old = _core.read(s.addr, s.length)
    res = _core.apply_batch(s.addr.to_bytes(8, "little"), bytes([s.length]),
                            old.ljust(16, b"\0"), s.renderings["alt"].ljust(16, b"\0"))
    assert (res["sites"], res["dropped_retired"]) == (0, 1)
    assert _core.read(s.addr, s.length) == old
    assert mod.owner in _core.retired()[1]
    with pytest.raises(pvpatch.RegistryError, match="unknown module 'lc_u1'"):
        pvpatch.unregister_module("lc_u1")
    with pytest.raises(pvpatch.RegistryError, match="pvpatch itself"):
        pvpatch.unregister_module("pvpatch._core")


def test_register_again_after_unregister_joins_the_current_variant(build, clean):
    lib = load(build("lc_u2"))
    register(lib)
    pvpatch.runtime_patch({"lc": "pv"})
    pvpatch.unregister_module("lc_u2")
    # No module holds a site of the group: the record still moves, and the next module that
    # joins is rendered to it, boot sites included.
    pvpatch.runtime_patch({"lc": "alt"})
    assert pvpatch.current()["lc"] == "alt"
    mod = register(lib)
    assert results(lib) == {3 + ADD["alt"]}
    assert lib.lc_mark() == MARK["alt"]
    assert all(_core.read(s.addr, s.length) == s.renderings["alt"] for s in all_sites(mod))
    pvpatch.runtime_patch({"lc": "native"})
    assert results(lib) == {3}


def test_a_module_joining_a_group_at_pv_is_rendered_pv(build, clean):
    a, b = load(build("lc_j1")), load(build("lc_j2"))
    register(a)
    pvpatch.runtime_patch({"lc": "pv"})
    mb = register(b)
    assert results(b) == {3 + ADD["pv"]}
    assert b.lc_mark() == MARK["pv"]
    assert all(_core.read(s.addr, s.length) == s.renderings["pv"] for s in all_sites(mb))
    assert pvpatch.current()["lc"] == "pv"
    pvpatch.runtime_patch({"lc": "native"})
    assert results(a) == results(b) == {3}


def test_registering_twice(build, clean):
    lib = load(build("lc_t1"))
    mod = register(lib)
    assert register(lib) is mod  # the same descriptor: the Module registered already
    assert [m.name for m in pvpatch.registry.modules].count("lc_t1") == 1
    other = load(build("lc_t1", tag="_copy"))  # another object, the same module name
    with pytest.raises(pvpatch.RegistryError, match="'lc_t1' is already registered"):
        register(other)
    assert other.lc_add(1, 2) == 3  # untouched: its sites still call *slot


STORM = r"""
import ctypes, json, mmap, os, sys, threading, time, _ctypes
import pvpatch
from pvpatch import _core, descriptor
sys.path.insert(0, sys.argv[1])
from test_lifecycle import load, results, register, ADD

mode, gone_path, other_path = sys.argv[2], sys.argv[3], sys.argv[4]
gone, other = load(gone_path), load(other_path)
mg = register(gone)
register(other)
if mode == "dtor":  # the C-level unregister, called by the library's destructor
    fn = ctypes.pythonapi.PyCapsule_GetPointer
    fn.restype, fn.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    gone.lc_set_unregister.argtypes = [ctypes.c_void_p]
    gone.lc_set_unregister(fn(_core._unregister, b"pvpatch._core._unregister"))
text = mg.text
stop = threading.Event()
errors, counts = [], {"batches": 0, "calls": 0}
variants = ["native", "pv", "alt"]

def storm():
    i = 0
    try:
        while not stop.is_set():
            i += 1
            pvpatch.runtime_patch({"lc": variants[i % 3], "selftest": variants[(i + 1) % 3]})
            counts["batches"] += 1
    except BaseException as exc:
        errors.append(repr(exc))

def caller():
    ok = {3 + v for v in ADD.values()}
    while not stop.is_set():
        r = results(other)
        counts["calls"] += 1
        if not r <= ok:
            errors.append(f"other module: {sorted(r)}")
            return

threads = [threading.Thread(target=storm), threading.Thread(target=caller)]
for t in threads:
    t.start()
time.sleep(0.3)
h = gone._handle
del gone
_ctypes.dlclose(h)            # during the storm; unmapped when pvpatch drops its pin
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    with open("/proc/self/maps") as f:
        if not any(line.startswith(f"{text[0]:x}-") for line in f):
            break
    time.sleep(0.01)
else:
    stop.set()
    print(json.dumps({"error": "the library was never unmapped"}))
    sys.exit(1)
# Something else at the same address: batches must never write it.
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
n = text[1] - text[0]
MAP_FIXED_NOREPLACE = 0x100000
got = libc.mmap(text[0], n, 3, 0x22 | MAP_FIXED_NOREPLACE, -1, 0)
mapped = got == text[0]
if mapped:
    ctypes.memset(got, 0xAB, n)
b0 = counts["batches"]
deadline = time.monotonic() + 10
while counts["batches"] < b0 + 200 and time.monotonic() < deadline and not errors:
    time.sleep(0.01)
stop.set()
for t in threads:
    t.join(10)
untouched = mapped and ctypes.string_at(text[0], n) == b"\xab" * n
pvpatch.runtime_patch({"lc": "pv"})
print(json.dumps({"errors": errors, "batches": counts["batches"], "after": counts["batches"] - b0,
                  "calls": counts["calls"], "mapped": mapped, "untouched": untouched,
                  "alive": [t.name for t in threads if t.is_alive()],
                  "modules": [m.name for m in pvpatch.registry.modules],
                  "other": sorted(results(other)), "current": pvpatch.current()["lc"]}))
"""


@pytest.mark.parametrize("writer", ["proc-mem", "alias"])
@pytest.mark.parametrize("mode", ["dlclose", "dtor"])
def test_dlclose_during_a_runtime_patch_storm(build, writer, mode):
    gone = build("lc_gone", dtor=(mode == "dtor"))
    other = build("lc_other")
    env = dict(os.environ, PVPATCH_WRITER=writer)
    try:
        p = subprocess.run([sys.executable, "-c", STORM, HERE, mode, gone, other], env=env,
                           capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the storm did not end in 120 s: {exc.stdout!r} {exc.stderr!r}")
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr[-3000:])
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["errors"] == [] and out["alive"] == [], out
    assert out["mapped"] and out["untouched"], out
    assert out["after"] >= 200, out  # batches kept going after the unload
    assert out["modules"] == ["pvpatch._core", "lc_other"], out
    assert out["other"] == [3 + ADD["pv"]] and out["current"] == "pv", out


def test_the_destructor_unregisters_through_the_c_entry_point(build):
    lib = load(build("lc_d1", dtor=True))
    mod = register(lib)
    fn = ctypes.pythonapi.PyCapsule_GetPointer
    fn.restype, fn.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    lib.lc_set_unregister.argtypes = [ctypes.c_void_p]
    lib.lc_set_unregister(fn(_core._unregister, b"pvpatch._core._unregister"))
    pvpatch.runtime_patch({"lc": "alt"})
    gen = _core.retire_gen()
    handle = lib._handle
    del lib
    import _ctypes
    _ctypes.dlclose(handle)  # no pvpatch call in between: the destructor itself retires
    assert _core.retire_gen() == gen + 1
    assert mod.owner in _core.retired()[1]
    pvpatch.runtime_patch({"lc": "pv"})
    assert "lc_d1" not in [m.name for m in pvpatch.registry.modules]


def test_a_collected_module_object_is_unregistered(tmp_path):
    import gc
    import importlib.util
    import sysconfig
    out = str(tmp_path / ("lcmod" + sysconfig.get_config_var("EXT_SUFFIX")))
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-fvisibility=hidden", "-Wall", "-Werror",
                    f"-I{sysconfig.get_paths()['include']}", f"-I{pvpatch.get_include()}",
                    os.path.join(HERE, "c", "lifecycle_mod.c"), "-o", out],
                   check=True, timeout=120)
    spec = importlib.util.spec_from_file_location("lcmod", out)
    lcmod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lcmod)
    mod = pvpatch.register_module(lcmod)
    pvpatch.runtime_patch({"lcm": "pv"})
    assert lcmod.scale(21) == 63
    scale = ctypes.CDLL(out).lcmod_scale  # the code stays loaded: CPython never unloads it
    scale.restype, scale.argtypes = ctypes.c_long, [ctypes.c_long]
    assert scale(21) == 63
    ref = weakref.ref(lcmod)
    del lcmod, spec
    gc.collect()
    assert ref() is None
    # The next patching call unregisters it first (its sites go to their default, whose slot
    # holds pv, the variant then), and then switches a group that has no site left.
    pvpatch.runtime_patch({"lcm": "native"})
    assert "lcmod" not in [m.name for m in pvpatch.registry.modules]
    assert holds_default(mod)
    assert scale(21) == 63
    assert pvpatch.current()["lcm"] == "native"


def test_a_module_joining_the_lock_group_at_pv(tmp_path):
    """The lock group's switching is owned by locks.transition and its mode word: a module
    joining it while it is pv is rendered pv (the mode stays pv, its unlocks kick), and later
    switches go through the protocol for its sites too.  Exclusion is checked throughout."""
    import threading
    from pvpatch import locks
    out = str(tmp_path / "lk.so")
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-fvisibility=hidden", "-Wall", "-Werror",
                    f"-I{pvpatch.get_include()}", os.path.join(HERE, "c", "lifecycle_lock.c"),
                    "-o", out], check=True, timeout=120)
    lk = ctypes.CDLL(out)
    lk.lk_desc.restype = ctypes.c_void_p
    lk.lk_set.argtypes = [ctypes.c_void_p] * 3
    lk.lk_hammer.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long]
    g = next(g for g in pvpatch.core_module.desc.groups if g.name == "lock")
    ops = {o.name: o for o in g.ops}
    vi = {v: i for i, v in enumerate(g.variants)}
    lk.lk_set(ops["lock"].impls[vi["native"]].fn, ops["lock"].impls[vi["pv"]].fn,
              ops["unlock"].impls[vi["pv"]].fn)
    word, counter = ctypes.c_uint32(0), ctypes.c_long(0)
    try:
        pvpatch.runtime_patch({"lock": "pv"})
        assert locks.mode() == "pv"
        mod = pvpatch.register_desc(descriptor.read_module(lk.lk_desc()))
        assert all(_core.read(s.addr, s.length) == s.renderings["pv"] for s in mod.sites)
        assert locks.mode() == "pv" and pvpatch.current()["lock"] == "pv"
        n, iters = 4, 20000
        threads = [threading.Thread(target=lk.lk_hammer,
                                    args=(ctypes.addressof(word), ctypes.addressof(counter),
                                          iters)) for _ in range(n)]
        for t in threads:
            t.start()
        for v in ["native", "pv", "hybrid", "native", "pv"]:
            pvpatch.runtime_patch({"lock": v})
            assert locks.mode() == v
            assert all(_core.read(s.addr, s.length) == s.renderings[v] for s in mod.sites)
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "a lock waiter never woke"
        assert counter.value == n * iters and word.value == 0
        pvpatch.unregister_module(mod)
        assert locks.mode() == "pv"
        pvpatch.runtime_patch({"lock": "native"})
        assert locks.mode() == "native"
        assert holds_default(mod)
    finally:
        for m in [m for m in pvpatch.registry.modules if m.name == "lc_lock"]:
            pvpatch.unregister_module(m)
        pvpatch.runtime_patch({"lock": "native"})
