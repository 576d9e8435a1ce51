"""Python's registry and runtime_patch on the C runtime (rt.c, plan.c): one implementation.
The renderings Python records are the C planner's, a switch is the C switch, and what each side
says a group holds is read from the same bytes."""
from __future__ import annotations

import ctypes

import pytest

import pvpatch
from pvpatch import _core, gen, x86
from pvpatch.errors import BatchRefused


@pytest.fixture(scope="module")
def generated():
    g = gen.generate(7, length=8, group="rtpy")
    pvpatch.register_desc(g.desc, text=g.text)
    yield g
    pvpatch.runtime_patch({"rtpy": "native"})


def test_python_and_c_agree_on_every_switch(generated):
    op = generated.desc.groups[0].ops[0]
    values = {}
    for v in ("pv", "alt", "native", "alt", "pv"):
        ev = pvpatch.runtime_patch({"rtpy": v})
        assert ev.sites == 7 and ev.batches == 1, ev
        assert pvpatch.current()["rtpy"] == v == _core.rt_current("rtpy")
        assert _core.rt_bytes_match("rtpy", "value", v) == 1
        others = [w for w in ("native", "pv", "alt") if w != v]
        assert all(_core.rt_bytes_match("rtpy", "value", w) == 0 for w in others)
        # the op slot (what a default site calls) follows the variant
        vi = generated.desc.groups[0].variants.index(v)
        assert ctypes.c_void_p.from_address(op.slot).value == op.impls[vi].fn
        values[v] = {generated.call(i) for i in range(7)}
    assert len(values["native"]) == len(values["pv"]) == len(values["alt"]) == 1
    assert len(set.union(*values.values())) == 3  # three variants, three answers


def test_switch_to_the_current_variant_writes_nothing(generated):
    pvpatch.runtime_patch({"rtpy": "pv"})
    ev = pvpatch.runtime_patch({"rtpy": "pv"})
    assert ev.sites == 0 and ev.batches == 0 and ev.changes == {}


def test_refusal_names_the_site_and_changes_nothing(generated):
    pvpatch.runtime_patch({"rtpy": "native"})
    site = generated.desc.runtime[3]
    before = _core.read(site.addr, site.length)
    _core.write_code(site.addr, b"\xcc")  # a debugger's breakpoint, say
    try:
        with pytest.raises(BatchRefused) as exc:
            pvpatch.runtime_patch({"rtpy": "pv"})
        msg = str(exc.value)
        assert f"runtime[3] rtpy.value at {site.addr:#x}" in msg, msg
        assert "Nothing was written" in msg
        assert _core.rt_bytes_match("rtpy", "value", "pv") == 0
        assert _core.read(generated.desc.runtime[0].addr, site.length) != \
            _core.read(site.addr, site.length)  # site 0 untouched, still native
    finally:
        _core.write_code(site.addr, before)
    assert pvpatch.current()["rtpy"] == "native"


def test_renderings_come_from_the_c_planner():
    site, fn = 0x7f0000001000, 0x7f0000002000
    assert x86.render(site, 6, fn=fn, template=None, is_nop=False, inline_ok=False) == \
        _core.render(site, 6, fn, None, False, False) == ("call", b"\x2e\xe8" +
                                                          (fn - site - 6).to_bytes(4, "little"))
    assert x86.render(site, 8, fn=fn, template=b"\x48\x83\x07\x02", is_nop=False,
                      inline_ok=True) == ("inline", b"\x2e" * 4 + b"\x48\x83\x07\x02")
    assert x86.render(site, 7, fn=fn, template=None, is_nop=True, inline_ok=False) == \
        ("nop", x86.CANONICAL_NOPS[7])
    with pytest.raises(x86.EncodeError, match="out of rel32 range"):
        x86.render(site, 6, fn=site + 2**32, template=None, is_nop=False, inline_ok=False)
    with pytest.raises(x86.EncodeError, match="no single NOP is 16 bytes"):
        x86.render(site, 16, fn=fn, template=None, is_nop=True, inline_ok=False)


def test_shipped_templates_are_the_c_table():
    import importlib
    registry = importlib.import_module("pvpatch.registry")
    assert registry.SHIPPED_TEMPLATES == _core.shipped_templates()
    assert all(_core.template_trusted(t) for t in registry.SHIPPED_TEMPLATES)
    assert not _core.template_trusted(b"\x0f\x0b")  # ud2: never trusted by default


def test_pin_reports_objects_that_are_gone():
    handles, gone = _core.pin(["/nonexistent/libnothing.so"], [(0, 0)])
    assert handles == b"" and gone == [0]
    _core.unpin(handles)
