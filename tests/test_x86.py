"""The encoder's bytes, decoded by a real disassembler (capstone) instruction by instruction."""
import pytest

from pvpatch import x86
from pvpatch.disasm import decode

SITE = 0x7F0000001000


@pytest.mark.parametrize("n", range(1, 16))
def test_single_nop_is_one_nop_instruction(n):
    insns = decode(x86.nop(n), SITE)
    assert len(insns) == 1
    assert insns[0][1] == n
    assert insns[0][2].startswith("nop")


@pytest.mark.parametrize("n", range(0, 30))
def test_padding_is_canonical_nops(n):
    code = x86.nops(n)
    assert len(code) == n
    insns = decode(code, SITE)
    assert all(t.startswith("nop") for _, _, t in insns)
    assert all(x86.CANONICAL_NOPS[size] == code[a - SITE:a - SITE + size] for a, size, _ in insns)


@pytest.mark.parametrize("length", range(5, 16))
@pytest.mark.parametrize("target", [SITE + 0x1234, SITE - 0x7000_0000, SITE + 5])
def test_call_rel32_is_one_call_to_target(length, target):
    insns = decode(x86.call_rel32(SITE, target, length), SITE)
    assert len(insns) == 1
    addr, size, text = insns[0]
    assert size == length
    assert text == f"callq {target:#x}"


def test_call_out_of_range_is_refused():
    with pytest.raises(x86.EncodeError, match="rel32 range"):
        x86.call_rel32(SITE, SITE + 2**31 + 100, 6)


@pytest.mark.parametrize("length", range(6, 16))
def test_default_site_is_one_call_through_slot(length):
    """The build-time rendering has no inner instruction boundary: one call, ending the site,
    with its rel32 in the same place as a direct call rendering's."""
    slot = SITE + 0x2000
    code = x86.default_site(SITE, slot, length)
    insns = decode(code, SITE)
    assert len(insns) == 1
    addr, size, text = insns[0]
    assert (addr, size) == (SITE, length)  # returns land on the site end
    assert text.replace("%cs:", "") == f"callq *{slot - (SITE + length):#x}(%rip)"
    direct = x86.call_rel32(SITE, SITE + 0x40, length)
    assert code[:length - 6] == direct[:length - 6] == bytes([x86.CS]) * (length - 6)
    assert code[length - 6:length - 4] == b"\xff\x15" and direct[length - 5] == 0xE8


@pytest.mark.parametrize("tmpl,text", [
    (bytes.fromhex("c60700"), "movb $0, %cs:(%rdi)"),
    (bytes.fromhex("488d0437"), "leaq %cs:(%rdi, %rsi), %rax"),
    (bytes.fromhex("b803100000"), "movl $0x1003, %eax"),
])
@pytest.mark.parametrize("length", [6, 9, 15])
def test_stretched_template_is_one_instruction(tmpl, text, length):
    insns = decode(x86.stretch(tmpl, length), SITE)
    assert len(insns) == 1 and insns[0][1] == length
    # The CS override is ignored in 64-bit mode; capstone shows it on memory operands only.
    assert insns[0][2].replace("%cs:", "") == text.replace("%cs:", "")


def test_too_long_is_refused():
    with pytest.raises(x86.EncodeError):
        x86.stretch(b"\x90" * 3, 2)
    with pytest.raises(x86.EncodeError):
        x86.nop(16)
    with pytest.raises(x86.EncodeError):
        x86.default_site(SITE, SITE, 5)


def test_render_chooses_kind():
    kind, code = x86.render(SITE, 6, fn=SITE + 100, template=bytes.fromhex("c60700"),
                            is_nop=False, inline_ok=True)
    assert kind == "inline"
    kind, code = x86.render(SITE, 6, fn=SITE + 100, template=bytes.fromhex("c60700"),
                            is_nop=False, inline_ok=False)
    assert kind == "call" and decode(code, SITE)[0][2] == f"callq {SITE + 100:#x}"
    kind, code = x86.render(SITE, 6, fn=SITE + 100, template=b"\x48\xb8" + bytes(8),
                            is_nop=False, inline_ok=True)
    assert kind == "call"  # a 10-byte template does not fit 6 bytes
    kind, code = x86.render(SITE, 7, fn=0, template=None, is_nop=True, inline_ok=True)
    assert kind == "nop" and len(decode(code, SITE)) == 1
