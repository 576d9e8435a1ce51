"""Bad site records and bad bytes: an error naming the site, and nothing patched."""
import ctypes
import dataclasses

import pytest

import pvpatch
from pvpatch import _core, gen, patcher, x86


def fresh(n=4, length=6, group="badinput"):
    g = gen.generate(n, length=length, group=group)
    before = {r.addr: _core.read(r.addr, r.length) for r in g.desc.runtime}
    return g, before


def unchanged(g, before):
    """Every site still holds the bytes it had (read at the original addresses)."""
    return all(_core.read(a, len(b)) == b for a, b in before.items())


def register(g):
    return pvpatch.register_desc(g.desc, text=g.text)


def replace_record(g, i, **changes):
    g.desc.runtime[i] = dataclasses.replace(g.desc.runtime[i], **changes)


def test_site_outside_text():
    g, before = fresh()
    replace_record(g, 2, addr=g.text[1] + 64)
    with pytest.raises(pvpatch.SiteError, match=r"runtime\[2\].*outside the module's text"):
        register(g)
    assert unchanged(g, before)
    assert not any(m.name == g.desc.name for m in patcher.registry.modules)


def test_length_too_short():
    g, before = fresh()
    replace_record(g, 1, length=4)
    with pytest.raises(pvpatch.SiteError, match=r"runtime\[1\].*too short for any rendering"):
        register(g)
    assert unchanged(g, before)


def test_bytes_not_what_the_record_says():
    g, before = fresh()
    site = g.desc.runtime[3].addr
    _core.write_code(site, b"\x90")  # one byte off
    with pytest.raises(pvpatch.SiteError, match=r"runtime\[3\].*not the default"):
        register(g)
    before[site] = b"\x90" + before[site][1:]
    assert unchanged(g, before)


def test_unknown_group_and_op():
    g, before = fresh()
    replace_record(g, 0, group=7)
    with pytest.raises(pvpatch.SiteError, match=r"runtime\[0\].*unknown group index 7"):
        register(g)
    g, before = fresh()
    replace_record(g, 1, op=3)
    with pytest.raises(pvpatch.SiteError, match=r"runtime\[1\].*unknown op index 3.*value"):
        register(g)
    assert unchanged(g, before)


def test_registered_generated_sites_work_and_switch():
    g, _ = fresh(n=50, length=8, group="gen8")
    register(g)
    assert [g.call(i) for i in (0, 49)] == [0x1001, 0x1001]
    pvpatch.runtime_patch({"gen8": "alt"})
    assert _core.read(g.desc.runtime[0].addr, 8) == x86.stretch(bytes.fromhex("b803100000"), 8)
    assert [g.call(i) for i in (0, 49)] == [0x1003, 0x1003]
    pvpatch.runtime_patch({"gen8": "pv"})
    assert [g.call(i) for i in (0, 49)] == [0x1002, 0x1002]


def test_batch_refused_on_one_mismatching_byte_writes_nothing():
    g, _ = fresh(n=200, group="refuse")
    register(g)
    victim = g.desc.runtime[123]
    good = _core.read(victim.addr, victim.length)
    _core.write_code(victim.addr + 5, bytes([good[5] ^ 0xFF]))
    snapshot = [_core.read(r.addr, r.length) for r in g.desc.runtime]
    with pytest.raises(pvpatch.BatchRefused, match=r"runtime\[123\].*not the expected old "
                                                   r"bytes.*Nothing was written"):
        pvpatch.runtime_patch({"refuse": "pv"})
    assert [_core.read(r.addr, r.length) for r in g.desc.runtime] == snapshot
    assert pvpatch.registry.group("refuse").current == "native"
    _core.write_code(victim.addr + 5, good[5:6])  # repair: now it goes
    pvpatch.runtime_patch({"refuse": "pv"})
    assert g.call(123) == 0x1002


def test_same_module_twice():
    g, _ = fresh(n=1, group="twice")
    register(g)
    with pytest.raises(pvpatch.RegistryError, match="already registered"):
        register(g)


def test_refused_registration_leaves_nothing_behind(monkeypatch):
    # The C core refuses the registration batch (one expected old byte is wrong by the time
    # the batch runs): nothing is written and nothing is registered.
    g, before = fresh(n=3, group="refusedreg")
    real = _core.apply_batch

    def one_wrong_old_byte(addrs, lens, old, new, *rest):
        old = bytearray(old)
        old[16 * (len(lens) - 1) + 2] ^= 0xFF
        return real(addrs, lens, bytes(old), new, *rest)

    monkeypatch.setattr(_core, "apply_batch", one_wrong_old_byte)
    with pytest.raises(pvpatch.BatchRefused, match="not the expected old bytes"):
        register(g)
    monkeypatch.setattr(_core, "apply_batch", real)
    assert unchanged(g, before)
    assert "refusedreg" not in pvpatch.registry.groups
    assert not any(m.name == g.desc.name for m in patcher.registry.modules)
    register(g)  # and it registers with the right bytes
    assert g.call(0) == 0x1001
