"""The template ABI, checked at registration, and templates gated on CPU features.

Real extensions (tests/c/tmplext.c built with gcc, one shared object per template) are
registered; a bad template is refused with an error naming the module, group, op and variant,
and no byte of the module changes.  The core's own `bits` group (popcnt/lzcnt gated on POPCNT
and LZCNT) is masked and unmasked while C threads run its sites and check every result.
"""
import ctypes
import importlib.util
import json
import os
import re
import subprocess
import sys
import sysconfig
import time

import pytest

import pvpatch
from pvpatch import _core, descriptor, disasm, patcher, x86

REGISTRY = sys.modules["pvpatch.registry"]  # pvpatch.registry is the Registry instance
HERE = os.path.dirname(__file__)
SOURCE = os.path.join(HERE, "c", "tmplext.c")
GOOD = "0xb8,0x07,0,0,0"  # mov $7,%eax: not a template pvpatch ships

# name: (template bytes, what the refusal says)
BAD = {
    "two": ("0xb8,0x07,0,0,0,0x90", r"2 instructions \(movl \$7, %eax; nop\)|2 instructions"),
    "riprel": ("0x48,0x8b,0x05,0,0,0,0", r"RIP-relative"),
    "jmp": ("0xeb,0x00", r"control flow"),
    "push": ("0x50", r"uses the stack or rsp"),
    "rbx": ("0x48,0x89,0xc3", r"writes rbx: a callee-saved register"),
    "ret": ("0xc3", r"control flow \(a return\)"),
    "trunc": ("0x48,0x8d,0x04", r"not a whole instruction \(truncated or invalid\)"),
    "ud2": ("0x0f,0x0b", r"undefined-instruction trap"),
    "xmm": ("0x66,0x0f,0xef,0xc0", r"writes xmm0: state outside the site's clobbers"),
    "syscall": ("0x0f,0x05", r"system call"),
}


def build(tmp, name, tmpl, needs="0"):
    out = tmp / (name + sysconfig.get_config_var("EXT_SUFFIX"))
    cmd = ["gcc", "-O2", "-shared", "-fPIC", "-fvisibility=hidden", "-Wall", "-Werror",
           f"-DMODNAME={name}", f"-DTMPL={tmpl}", f"-DNEEDS={needs}",
           f"-I{sysconfig.get_paths()['include']}", f"-I{pvpatch.get_include()}", SOURCE,
           "-o", str(out)]
    subprocess.run(cmd, check=True, timeout=120)
    return str(out)


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def desc_of(mod):
    return descriptor.read_module(descriptor.capsule_address(mod.__pvpatch__))


def text_bytes(desc):
    """Every byte of every site and every slot of the module, as it is now."""
    sites = {r.addr: _core.read(r.addr, r.length) for r in desc.runtime + desc.boot}
    slots = {op.slot: _core.read(op.slot, 8) for g in desc.groups for op in g.ops}
    return sites, slots


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tmplext")
    out = {name: build(tmp, f"tmpl_{name}", t) for name, (t, _) in BAD.items()}
    out["good"] = build(tmp, "tmpl_good", GOOD)
    out["gated"] = build(tmp, "tmpl_gated", GOOD, "PVPATCH_IMPL_NEEDS_BMI2")
    out["unknownflag"] = build(tmp, "tmpl_unknownflag", GOOD, "0x80000000u")
    return out


@pytest.fixture
def tmplg_native():
    yield
    if "tmplg" in pvpatch.current():
        pvpatch.runtime_patch({"tmplg": "native"})
    pvpatch.unmask_features(pvpatch.features()["masked"])


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_template_is_refused_and_nothing_written(built, name):
    mod = load(built[name], f"tmpl_{name}")
    desc = desc_of(mod)
    before = text_bytes(desc)
    assert mod.get() == 1  # the default rendering calls the slot: native
    msg = (rf"module tmpl_{name}: group 'tmplg', op 'get', variant 'fast': template "
           rf"{bytes(int(b, 16) for b in BAD[name][0].split(',')).hex()} refused: .*"
           rf"({BAD[name][1]}).*Nothing was written")
    with pytest.raises(pvpatch.RegistryError, match=msg):
        pvpatch.register_module(mod)
    assert text_bytes(desc) == before
    assert not any(m.name == f"tmpl_{name}" for m in patcher.registry.modules)
    assert mod.get() == 1


def test_template_checks_by_class():
    """Each rule of the template ABI, straight from the decoder (no module needed)."""
    ok = {"488d0437": "leaq (%rdi, %rsi), %rax", "f0480fc107": "lock xadd",
          "4c89c0": "mov r8", "0f31": "rdtsc", "48c70700000000": "movq $0"}
    for h in ok:
        x86.check_template(bytes.fromhex(h))
    bad = {"e800000000": "control flow", "ff15 00000000": "control flow",
           "7400": "control flow", "e2fe": "control flow", "cc": "control flow",
           "cd80": "control flow", "f4": "privileged", "e680": "port I/O", "ec": "port I/O",
           "fd": "direction flag", "0fae5424f0": "writes the MXCSR", "4889e0": "stack or rsp",
           "488d6424f8": "stack or rsp", "41ffc4": "writes r12", "4889c5": "writes rbp",
           "0fa2": "writes rbx", "c5fd6fc1": "writes ymm0", "0f01f8": "privileged",
           "c9": "stack or rsp", "": "empty", "90" * 16: "longer than any instruction",
           "488d0500000000": "RIP-relative", "ff2500000000": "control flow"}
    for h, why in bad.items():
        with pytest.raises(x86.TemplateError, match=re.escape(why)):
            x86.check_template(bytes.fromhex(h))


def test_good_template_renders_inline(built, tmplg_native):
    mod = load(built["good"], "tmpl_good")
    pvpatch.register_module(mod)
    assert mod.get() == 1
    pvpatch.runtime_patch({"tmplg": "fast"})
    assert mod.get() == 7
    site = [s for s in patcher.registry.sites("tmplg") if s.module == "tmpl_good"
            and s.op == "get"][0]
    assert site.kinds["fast"] == "inline"
    assert _core.read(site.addr, site.length) == x86.stretch(bytes.fromhex("b807000000"), 15)


def test_unknown_impl_flags_are_refused(built):
    mod = load(built["unknownflag"], "tmpl_unknownflag")
    with pytest.raises(pvpatch.PvpatchError, match=r"module tmpl_unknownflag: group tmplg, op "
                                                   r"get, variant fast: unknown implementation "
                                                   r"flags 0x80000000"):
        pvpatch.register_module(mod)
    assert not any(m.name == "tmpl_unknownflag" for m in patcher.registry.modules)
    assert mod.get() == 1  # still the build-time rendering: nothing was written


def test_shipped_templates_are_the_cores_and_follow_the_abi():
    """The table of templates accepted without capstone is exactly the core's templates, each
    one checked here with capstone and disassembled to the text the table gives."""
    core = descriptor.read_module(descriptor.capsule_address(_core.__pvpatch__))
    mine = {impl.template for g in core.groups for op in g.ops for impl in op.impls
            if impl.template}
    assert mine == set(REGISTRY.SHIPPED_TEMPLATES)
    for code, text in REGISTRY.SHIPPED_TEMPLATES.items():
        x86.check_template(code)
        assert disasm.text(code) == text


NO_CAPSTONE = r"""
import sys
sys.modules["capstone"] = None  # as if pvpatch[disasm] were not installed
import importlib.util, json, pvpatch
from pvpatch import cli, patcher, x86
assert x86.template_decoder() is None
spec = importlib.util.spec_from_file_location(sys.argv[2], sys.argv[1])
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
pvpatch.register_module(mod)
pvpatch.runtime_patch({"tmplg": "fast", "selftest": "native"})
kinds = {f"{s.module}:{s.group}.{s.op}:{s.length}": s.kinds[pvpatch.current()[s.group]]
         for s in patcher.registry.sites()}
print(json.dumps({"get": mod.get(), "pop": mod.pop(0xff), "kinds": kinds}), flush=True)
cli.main(["sites"])
"""


def test_without_capstone_third_party_templates_call(built, tmp_path):
    """Without the decoder a third-party template cannot be checked: its sites call the
    function (always correct) and `pvpatch sites` says why; the core's shipped templates are
    still rendered inline."""
    r = subprocess.run([sys.executable, "-c", NO_CAPSTONE, built["good"], "tmpl_good"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    first, *lines = r.stdout.splitlines()
    res = json.loads(first)
    assert res["get"] == 7 and res["pop"] == 8
    assert res["kinds"]["tmpl_good:tmplg.get:15"] == "call"
    # pop's template is popcnt %rdi,%rax, byte for byte one that pvpatch ships: accepted.
    assert res["kinds"]["tmpl_good:tmplg.pop:6"] == "inline"
    assert res["kinds"]["pvpatch._core:selftest.add:6"] == "inline"
    assert res["kinds"]["pvpatch._core:bits.popcount:6"] == "inline"
    get = [ln for ln in lines if "tmplg.get" in ln]
    assert len(get) == 1 and "template not checked: capstone is not installed" in get[0]
    assert "pip install 'pvpatch[disasm]'" in get[0]
    core = [ln for ln in lines if "selftest.add" in ln]
    assert core and not any("not checked" in ln for ln in core)


# ---- CPU feature gates ----------------------------------------------------------------------

def sites_of(group, op=None):
    return [s for s in patcher.registry.sites(group) if op is None or s.op == op]


def live_kind(s):
    now = _core.read(s.addr, s.length)
    impl = s.impls[pvpatch.current()[s.group]]
    if impl.template and now == x86.stretch(impl.template, s.length):
        return "inline"
    assert now == x86.call_rel32(s.addr, impl.fn, s.length), now.hex()
    return "call"


def test_features_query():
    f = pvpatch.features()
    assert set(f) == {"detected", "masked", "effective"}
    assert set(f["effective"]) == set(f["detected"]) - set(f["masked"])
    # The CPU's own word on POPCNT (CPUID.01H:ECX[23]).
    assert ("popcnt" in f["detected"]) == bool(_core.cpuid(1)[2] & (1 << 23))
    with pytest.raises(pvpatch.PvpatchError, match=r"unknown CPU feature 'sse9'; known: popcnt"):
        pvpatch.mask_features({"sse9"})
    assert pvpatch.features() == f


def test_mask_rerenders_only_the_rendering(tmplg_native):
    if "popcnt" not in pvpatch.features()["detected"]:
        pytest.skip("this CPU has no POPCNT: the gate is closed from the start")
    [pop] = sites_of("bits", "popcount")
    before = pvpatch.current()
    assert live_kind(pop) == "inline" and _core.bits_popcount(0xF0F0) == 8
    ev = pvpatch.mask_features({"popcnt"})
    assert ev.kind == "features" and ev.changes == {} and ev.sites == 1
    assert pvpatch.features()["masked"] == ["popcnt"]
    assert live_kind(pop) == "call" and _core.bits_popcount(0xF0F0) == 8
    assert "needs popcnt(masked)" in pop.gate("native")
    assert pvpatch.current() == before  # no group changed variant
    [clz] = sites_of("bits", "clz")
    assert live_kind(clz) == ("inline" if "lzcnt" in pvpatch.features()["detected"] else "call")
    ev = pvpatch.unmask_features({"popcnt"})
    assert ev.sites == 1 and live_kind(pop) == "inline"
    assert pvpatch.mask_features(()).sites == 0  # nothing to do: an empty batch


def test_mask_applies_to_other_variants_and_later_modules(built, tmplg_native):
    """A masked feature also holds for variants not current (the next runtime_patch renders
    them as calls) and for a module registered while it is masked."""
    if "popcnt" not in pvpatch.features()["detected"]:
        pytest.skip("this CPU has no POPCNT")
    if not any(m.name == "tmpl_good" for m in patcher.registry.modules):
        pvpatch.register_module(load(built["good"], "tmpl_good"))
    pvpatch.mask_features("popcnt")
    gated = load(built["gated"], "tmpl_gated")  # get's template needs BMI2 here
    pvpatch.register_module(gated)
    pvpatch.runtime_patch({"tmplg": "fast"})
    pops = [s for s in sites_of("tmplg", "pop")]
    assert len(pops) == 2 and all(live_kind(s) == "call" for s in pops)
    assert gated.pop(0xFFFF) == 16
    pvpatch.unmask_features("popcnt")
    assert all(live_kind(s) == "inline" for s in pops) and gated.pop(0xFFFF) == 16
    [get] = [s for s in sites_of("tmplg", "get") if s.module == "tmpl_gated"]
    has_bmi2 = "bmi2" in pvpatch.features()["detected"]
    assert live_kind(get) == ("inline" if has_bmi2 else "call") and gated.get() == 7
    if has_bmi2:
        pvpatch.mask_features({"bmi2"})
        assert live_kind(get) == "call" and gated.get() == 7
        assert get.gate("fast") == "needs bmi2(masked)"
    pvpatch.runtime_patch({"tmplg": "native"})
    assert gated.get() == 1 and all(live_kind(s) == "call" for s in pops)


def test_mask_while_threads_run_the_sites():
    """Threads run both `bits` sites and check every result against a bit-by-bit count while
    the features are masked and unmasked 200 times: every result stays right."""
    pvpatch.unmask_features(pvpatch.features()["masked"])
    sites = sites_of("bits")
    assert len(sites) == 2
    _core.bits_stress_start(3)
    try:
        deadline = time.monotonic() + 60
        last = _core.bits_stress_calls()
        for i in range(200):
            pvpatch.mask_features({"popcnt", "lzcnt"} if i % 2 == 0 else {"popcnt"})
            pvpatch.unmask_features({"popcnt", "lzcnt"} if i % 3 else {"lzcnt"})
            # Let the threads make progress through the new renderings (bounded).
            while _core.bits_stress_calls() == last:
                assert time.monotonic() < deadline, (
                    f"no progress after {i} rounds: calls {last}, masked "
                    f"{pvpatch.features()['masked']}")
                time.sleep(0.0005)
            last = _core.bits_stress_calls()
    finally:
        res = _core.bits_stress_stop()
        pvpatch.unmask_features({"popcnt", "lzcnt"})
    assert res["errors"] == 0, res
    assert res["calls"] > 0
    detected = set(pvpatch.features()["detected"])
    for s in sites:  # every gate open again where the CPU has the feature
        needs = set(descriptor.feature_names(s.impls["native"].needs))
        assert needs and live_kind(s) == ("inline" if needs <= detected else "call")


def test_refused_rerender_changes_neither_sites_nor_mask():
    """A foreign int3 in a gated site (a debugger's breakpoint) makes the re-render batch refuse:
    no byte changes, the mask stays as it was, and the next mask after the int3 is gone works."""
    if "popcnt" not in pvpatch.features()["detected"]:
        pytest.skip("this CPU has no POPCNT")
    pvpatch.unmask_features(pvpatch.features()["masked"])
    [pop] = sites_of("bits", "popcount")
    [clz] = sites_of("bits", "clz")
    first = _core.read(pop.addr, 1)
    before = {s.addr: _core.read(s.addr, s.length) for s in (pop, clz)}
    _core.write_code(pop.addr, b"\xcc")  # no thread runs this site meanwhile
    try:
        with pytest.raises(pvpatch.BatchRefused, match=r"bits\.popcount.*Nothing was written"):
            pvpatch.mask_features({"popcnt", "lzcnt"})
        assert pvpatch.features()["masked"] == []
        assert _core.read(clz.addr, clz.length) == before[clz.addr]  # one batch: clz untouched
        assert _core.read(pop.addr, pop.length) == b"\xcc" + before[pop.addr][1:]
    finally:
        _core.write_code(pop.addr, first)
    assert pop.kinds["native"] == "inline" and pop.gate("native") == "needs popcnt"
    pvpatch.mask_features({"popcnt", "lzcnt"})
    assert live_kind(pop) == "call" and _core.bits_popcount(7) == 3
    pvpatch.unmask_features({"popcnt", "lzcnt"})
    assert live_kind(pop) == "inline" and _core.bits_popcount(7) == 3
