"""The core's own sites: registered, rendered, called, switched."""
import json
import subprocess
import sys

import pytest

import pvpatch
from pvpatch import _core, elfsites, patcher
from pvpatch.disasm import decode

CORE = pvpatch.core_module
VARIANTS = ["native", "pv", "alt"]

# What selftest_sites.c declares, site by site: (op, length, noinline, section).
DECLARED = [
    ("value", 6, False, "runtime"), ("value", 8, False, "runtime"),
    ("value", 13, False, "runtime"), ("value", 7, True, "runtime"),
    ("add", 6, False, "runtime"), ("add", 9, False, "runtime"),
    ("wide", 15, False, "runtime"), ("wide", 12, False, "runtime"),
    ("wide", 6, False, "runtime"), ("mark", 6, False, "runtime"),
    ("mark", 11, False, "runtime"), ("value", 6, False, "boot"), ("add", 8, False, "boot"),
]


def expected_result(op, variant, a, b):
    i = VARIANTS.index(variant)
    return {"value": [0x1001, 0x1002, 0x1003][i],
            "add": a + b + [0, 0x200, 0x300][i],
            "wide": [0x1111222233334444, 0x2222333344445555, 0x3333444455556666][i],
            "mark": i}[op]


def impl_fn(op, variant):
    g = next(g for g in CORE.desc.groups if g.name == "selftest")
    o = next(o for o in g.ops if o.name == op)
    return o.impls[g.variants.index(variant)].fn


def expected_insn(op, variant, length, noinline):
    """The one instruction a site must hold, from the declarations above."""
    call = f"callq {impl_fn(op, variant):#x}"
    if variant == "native":
        return {"value": call, "add": "leaq (%rdi, %rsi), %rax",
                "wide": "movabsq $0x1111222233334444, %rax" if length >= 10 else call,
                "mark": "nop"}[op]
    if variant == "alt" and not noinline:
        return {"value": "movl $0x1003, %eax", "add": call, "wide": call,
                "mark": "addq $2, (%rdi)"}[op]
    return call


def selftest(sites):
    """The core holds other groups' sites too (lock); these tests are about selftest's."""
    return [s for s in sites if s.group == "selftest"]


def site_functions():
    """Site index (declaration order) -> the registry's Site, matched by address."""
    fns = [addr for addr, _ in _core.selftest_sites()]
    every = sorted(selftest(CORE.sites + CORE.boot), key=lambda s: s.addr)
    out = {}
    for s in every:
        owner = max((i for i, f in enumerate(fns) if f <= s.addr), key=lambda i: fns[i])
        out[owner] = s
    return out


def test_every_declared_site_is_registered():
    sites = site_functions()
    assert sorted(sites) == list(range(len(DECLARED)))
    for i, (op, length, noinline, section) in enumerate(DECLARED):
        s = sites[i]
        assert (s.op, s.length, s.section) == (op, length, section), i


@pytest.mark.parametrize("variant", VARIANTS)
def test_bytes_results_and_switch_back(variant, selftest_native):
    pvpatch.runtime_patch({"selftest": variant})
    sites = site_functions()
    for i, (op, length, noinline, section) in enumerate(DECLARED):
        s = sites[i]
        v = variant if section == "runtime" else "native"  # boot sites stay as registered
        insns = decode(patcher.site_bytes(s), s.addr)
        assert len(insns) == 1, (i, insns)               # one instruction, whole site
        assert insns[0][1] == length
        want = expected_insn(op, v, length, noinline)
        got = insns[0][2].replace("%cs:", "")
        assert got.startswith(want), (i, v, got, want)
        assert _core.selftest_call(i, 40, 2) == expected_result(op, v, 40, 2), (i, v)
    pvpatch.runtime_patch({"selftest": "native"})
    for i, (op, *_rest) in enumerate(DECLARED):
        assert _core.selftest_call(i, 40, 2) == expected_result(op, "native", 40, 2)


def test_slots_follow_the_current_variant(selftest_native):
    g = next(g for g in CORE.desc.groups if g.name == "selftest")
    import ctypes
    for v in VARIANTS:
        pvpatch.runtime_patch({"selftest": v})
        for op in g.ops:
            assert ctypes.c_void_p.from_address(op.slot).value == op.impls[
                g.variants.index(v)].fn


def test_events_record_what_happened(selftest_native):
    ev = pvpatch.runtime_patch({"selftest": "pv"})
    assert ev.changes == {"selftest": ("native", "pv")}
    assert ev.sites == len(selftest(CORE.sites)) and ev.syncs == 3 and ev.batches == 1
    assert pvpatch.events[-1] is ev
    again = pvpatch.runtime_patch({"selftest": "pv"})
    assert again.sites == 0 and again.syncs == 0  # nothing to do, nothing written


def test_native_variant_is_recorded():
    g = pvpatch.registry.group("selftest")
    assert g.native == "native" and g.variants == VARIANTS
    assert CORE.boot_variants == {"selftest": "native"}
    assert CORE.boot_bytes_dropped == 16 and CORE.desc.boot == []


def test_unknown_names_list_what_exists():
    with pytest.raises(pvpatch.RegistryError, match=r"unknown group 'nope'; known: .*selftest"):
        pvpatch.runtime_patch({"nope": "pv"})
    with pytest.raises(pvpatch.RegistryError, match=r"unknown variant .* 'fast'; known: alt, "
                                                    r"native, pv"):
        pvpatch.runtime_patch({"selftest": "fast"})
    with pytest.raises(pvpatch.RegistryError, match=r"known: add, mark, value, wide"):
        pvpatch.registry.group("selftest").check_op("mul")


def test_live_table_and_elf_agree():
    e = elfsites.read_elf(CORE.path)
    assert e.module == "pvpatch._core"
    base = elfsites.load_base(CORE.path, CORE.text[0])
    disk = sorted((s.section, base + s.vaddr, s.length, s.group, s.op, s.flags) for s in e.sites)
    live = sorted((s.section, s.addr, s.length, s.group, s.op, s.record.flags)
                  for s in CORE.sites + CORE.boot)
    assert disk == live
    assert {s.function for s in e.sites if s.group == "selftest"} == \
        {f"site{i}" for i in range(len(DECLARED))}


def test_records_are_eight_bytes_and_need_no_relocations():
    e = elfsites.read_elf(CORE.path)
    for sec in e.sections:
        assert sec["size"] == 8 * sec["records"]
    out = subprocess.run(["readelf", "-rW", CORE.path], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("readelf not available")
    spans = [(sec["vaddr"], sec["vaddr"] + sec["size"]) for sec in e.sections]
    for line in out.stdout.splitlines():
        parts = line.split()
        if parts and all(c in "0123456789abcdef" for c in parts[0]) and len(parts[0]) == 16:
            off = int(parts[0], 16)
            assert not any(lo <= off < hi for lo, hi in spans), line


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "pvpatch.cli", *args], capture_output=True,
                          text=True, timeout=60)


def test_cli_sites_json_lists_every_site():
    out = run_cli("sites", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert len([r for r in rows if r["group"] == "selftest"]) == len(DECLARED)
    assert {r["group"] for r in rows} == {"selftest", "lock", "bench_call", "bits"}
    keys = {"module", "section", "address", "length", "group", "op", "variant", "bytes"}
    assert all(keys <= set(r) for r in rows)
    assert {r["section"] for r in rows} == {"runtime", "boot"}


def test_cli_footprint():
    out = run_cli("sites", "--footprint", "--json")
    assert out.returncode == 0, out.stderr
    fp = json.loads(out.stdout)
    assert fp["bytes_per_record"] == 8
    names = {s["name"]: s for s in fp["sections"]}
    other_sites = sum(len(pvpatch.registry.sites(g)) for g in ("lock", "bench_call", "bits"))
    assert names["pvpatch_runtime"]["records"] == 11 + other_sites
    assert names["pvpatch_boot"]["records"] == 2
    assert fp["boot_records_dropped_bytes"] == {"pvpatch._core": 16}
    text = run_cli("sites", "--footprint").stdout
    assert "pvpatch_runtime" in text and "8 bytes per site record" in text
    dis = run_cli("sites", "--disasm")
    assert dis.returncode == 0 and "callq" in dis.stdout
