"""Disassembly with capstone, for `pvpatch sites --disasm` and for the encoder's tests.

capstone is the extra ``pvpatch[disasm]``: without it, importing this module raises MissingExtra
with the install hint."""
from __future__ import annotations

from .extras import require

capstone = require("capstone", "disassembly")

_md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
_md.syntax = capstone.CS_OPT_SYNTAX_ATT


def decode(code: bytes, addr: int = 0) -> list[tuple[int, int, str]]:
    """[(address, size, "mnemonic operands")] of every instruction in `code`; raises ValueError
    if some bytes do not decode."""
    out, used = [], 0
    for insn in _md.disasm(code, addr):
        out.append((insn.address, insn.size, f"{insn.mnemonic} {insn.op_str}".strip()))
        used += insn.size
    if used != len(code):
        raise ValueError(f"bytes {code[used:].hex()} at {addr + used:#x} do not decode")
    return out


def text(code: bytes, addr: int = 0) -> str:
    return "; ".join(t for _, _, t in decode(code, addr))
