"""x86-64 encodings that sites need: NOPs, call rel32, call through a RIP-relative slot, and the
stretching of one instruction to a site's length.  Pure functions over bytes.

Why every runtime rendering is *one* instruction: a thread can be preempted on any instruction
boundary, or return from a call to the end of the call.  If a site held two instructions (a call
and a NOP, say) and were re-rendered with a different split, such a thread would resume in the
middle of an instruction.  A single instruction per site has no inner boundary, so every
rendering agrees on where instructions start: the site start and the site end.  Instructions are
stretched with CS segment-override prefixes, which are ignored in 64-bit mode (assemblers pad
branches with them; compilers emit `cs call` for the same reason).

The build-time default rendering follows the same rule: `call *slot(%rip)` (ff 15 rel32)
stretched with the same prefixes, so a thread that runs a site before its module registers (or
is inside the slot's function, to return to the site end) is on a boundary of every rendering
when registration rewrites it.  All call renderings of a site (default and direct) keep their
rel32 field in the site's last 4 bytes; the header aligns it to 4 bytes.
"""
from __future__ import annotations

import struct

MAX_INSN = 15
CALL_REL32_LEN = 5
CALL_SLOT_LEN = 6
CS = 0x2E

# Intel SDM vol. 2B, "Recommended Multi-Byte Sequence of NOP Instruction".
CANONICAL_NOPS = {
    1: bytes.fromhex("90"),
    2: bytes.fromhex("6690"),
    3: bytes.fromhex("0f1f00"),
    4: bytes.fromhex("0f1f4000"),
    5: bytes.fromhex("0f1f440000"),
    6: bytes.fromhex("660f1f440000"),
    7: bytes.fromhex("0f1f8000000000"),
    8: bytes.fromhex("0f1f840000000000"),
    9: bytes.fromhex("660f1f840000000000"),
}
# Longer single NOPs: operand-size prefixes on the 10-byte `nopw %cs:0x0(%rax,%rax,1)`, as
# assemblers emit them.
_NOP10 = bytes.fromhex("662e0f1f840000000000")


class EncodeError(ValueError):
    """A request no x86-64 instruction can satisfy (too long, out of rel32 range)."""


def nop(length: int) -> bytes:
    """One NOP instruction of exactly `length` bytes (1..15)."""
    if not 1 <= length <= MAX_INSN:
        raise EncodeError(f"no single NOP is {length} bytes long (1..{MAX_INSN})")
    if length <= 9:
        return CANONICAL_NOPS[length]
    return b"\x66" * (length - 10) + _NOP10


def nops(length: int) -> bytes:
    """`length` bytes of canonical NOPs, as few instructions as possible (0 gives b"")."""
    if length < 0:
        raise EncodeError(f"negative padding {length}")
    out = b""
    while length > 0:
        n = min(length, 9)
        out += CANONICAL_NOPS[n]
        length -= n
    return out


def rel32(origin_end: int, target: int) -> bytes:
    """The signed 32-bit displacement from the end of an instruction to `target`."""
    d = target - origin_end
    if not -(2**31) <= d < 2**31:
        raise EncodeError(f"target {target:#x} is out of rel32 range of {origin_end:#x}")
    return struct.pack("<i", d)


def stretch(insn: bytes, length: int) -> bytes:
    """`insn` (one instruction) preceded by CS prefixes up to `length` bytes."""
    if len(insn) > length:
        raise EncodeError(f"a {len(insn)}-byte instruction does not fit in {length} bytes")
    if length > MAX_INSN:
        raise EncodeError(f"an instruction is at most {MAX_INSN} bytes, not {length}")
    return bytes([CS]) * (length - len(insn)) + insn


def call_rel32(site: int, target: int, length: int = CALL_REL32_LEN) -> bytes:
    """`call target` at `site`, stretched to `length` bytes (one instruction)."""
    if not CALL_REL32_LEN <= length <= MAX_INSN:
        raise EncodeError(f"a call rel32 needs 5..15 bytes, not {length}")
    return stretch(b"\xe8" + rel32(site + length, target), length)


def call_slot(site: int, slot: int, length: int = CALL_SLOT_LEN) -> bytes:
    """`call *slot(%rip)` at `site`, stretched to `length` bytes (one instruction)."""
    if not CALL_SLOT_LEN <= length <= MAX_INSN:
        raise EncodeError(f"a call through a slot needs 6..15 bytes, not {length}")
    return stretch(b"\xff\x15" + rel32(site + length, slot), length)


def default_site(site: int, slot: int, length: int) -> bytes:
    """The bytes a site holds at build time (include/pvpatch.h emits them): one
    `call *slot(%rip)` stretched with CS prefixes to the site length."""
    if not CALL_SLOT_LEN <= length <= MAX_INSN:
        raise EncodeError(f"a default site is 6..15 bytes, not {length}")
    return call_slot(site, slot, length)


def render(site: int, length: int, *, fn: int, template: bytes | None, is_nop: bool,
           inline_ok: bool) -> tuple[str, bytes]:
    """One variant's rendering of a site: (kind, bytes), kind in {"nop", "inline", "call"}.

    A NOP implementation renders as one NOP; a template renders inline when the site allows it
    and it fits; otherwise a direct call to the implementation's function.
    """
    if is_nop:
        return "nop", nop(length)
    if template and inline_ok and len(template) <= length:
        return "inline", stretch(template, length)
    return "call", call_rel32(site, fn, length)
