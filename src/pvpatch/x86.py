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

The renderings a site takes (nop, call, call through the slot, inline, and the choice among
them) are computed by the C runtime (src/pvpatch/_core/plan.c), which a process without Python
uses too: one implementation.  The functions here call it and keep Python's errors.
"""
from __future__ import annotations

import struct

from . import _core

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
    return _c(_core.nop, length)


def _c(fn, *args):
    """A C encoder's result, its refusal as EncodeError."""
    try:
        return fn(*args)
    except ValueError as exc:
        raise EncodeError(str(exc)) from None
    except OverflowError:
        raise EncodeError(f"an address out of range in {args}") from None


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
    return _c(_core.call_rel32, site, target, length)


def call_slot(site: int, slot: int, length: int = CALL_SLOT_LEN) -> bytes:
    """`call *slot(%rip)` at `site`, stretched to `length` bytes (one instruction)."""
    if not CALL_SLOT_LEN <= length <= MAX_INSN:
        raise EncodeError(f"a call through a slot needs 6..15 bytes, not {length}")
    return _c(_core.call_slot, site, slot, length)


def default_site(site: int, slot: int, length: int) -> bytes:
    """The bytes a site holds at build time (include/pvpatch.h emits them): one
    `call *slot(%rip)` stretched with CS prefixes to the site length."""
    if not CALL_SLOT_LEN <= length <= MAX_INSN:
        raise EncodeError(f"a default site is 6..15 bytes, not {length}")
    return _c(_core.default_site, site, slot, length)


def render(site: int, length: int, *, fn: int, template: bytes | None, is_nop: bool,
           inline_ok: bool) -> tuple[str, bytes]:
    """One variant's rendering of a site: (kind, bytes), kind in {"nop", "inline", "call"}.

    A NOP implementation renders as one NOP; a template renders inline when the site allows it
    and it fits; otherwise a direct call to the implementation's function.
    """
    return _c(_core.render, site, length, fn or 0, template or None, bool(is_nop),
              bool(inline_ok))


# ---- inline templates: the template ABI (docs/extensions.md, "Inline templates") -------------
#
# A template is rendered in place of a call, so it must do what the call could and nothing a
# call could not.  It is checked once, at registration, by a real decoder (capstone in detail
# mode: its operand list, implicit reads and writes, and instruction groups), never by hand.

class TemplateError(ValueError):
    """A template that breaks the template ABI; the message says which rule."""


# What a site's caller gives up across the site (include/pvpatch.h, PVPATCH__CLOBBERS and the
# argument registers): a template may write these and memory, nothing else.
TEMPLATE_WRITABLE = frozenset({"rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11",
                               "rflags"})
_GPR_FAMILY = {}
for _q, _names in {"rax": "eax ax al ah", "rbx": "ebx bx bl bh", "rcx": "ecx cx cl ch",
                   "rdx": "edx dx dl dh", "rsi": "esi si sil", "rdi": "edi di dil",
                   "rbp": "ebp bp bpl", "rsp": "esp sp spl", "rip": "eip ip"}.items():
    for _n in (_q, *_names.split()):
        _GPR_FAMILY[_n] = _q
for _i in range(8, 16):
    for _s in ("", "d", "w", "b"):
        _GPR_FAMILY[f"r{_i}{_s}"] = f"r{_i}"
_STACK = "rsp"
# Control flow capstone puts in no group, traps, and control state a call must preserve
# (the SysV ABI: DF clear, the MXCSR and x87 control words as the caller left them).
# By capstone instruction id (X86_INS_*), not by mnemonic: the syntaxes spell them differently.
_FORBIDDEN_INSNS = {
    "UD0": "an undefined-instruction trap", "UD1": "an undefined-instruction trap",
    "UD2": "an undefined-instruction trap", "INT1": "a trap", "HLT": "privileged",
    "IN": "port I/O", "INSB": "port I/O", "INSW": "port I/O", "INSD": "port I/O",
    "OUT": "port I/O", "OUTSB": "port I/O", "OUTSW": "port I/O", "OUTSD": "port I/O",
    "STD": "sets the direction flag (the ABI requires it clear)",
    "LDMXCSR": "writes the MXCSR", "VLDMXCSR": "writes the MXCSR",
    "FLDCW": "writes the x87 control word", "FLDENV": "writes the x87 environment",
    "FRSTOR": "writes the x87 state", "FXRSTOR": "writes the x87/SSE state",
    "FXRSTOR64": "writes the x87/SSE state", "XRSTOR": "writes extended state",
    "XRSTOR64": "writes extended state", "XRSTORS": "writes extended state",
    "XRSTORS64": "writes extended state", "SYSENTER": "a system call",
    "SYSCALL": "a system call", "SYSEXIT": "privileged", "SYSRET": "privileged",
    "WRFSBASE": "writes the fs base", "WRGSBASE": "writes the gs base", "SWAPGS": "privileged",
    "PUSH": "uses the stack or rsp", "POP": "uses the stack or rsp",
    "PUSHF": "uses the stack or rsp", "POPF": "uses the stack or rsp",
    "PUSHFQ": "uses the stack or rsp", "POPFQ": "uses the stack or rsp",
    "ENTER": "uses the stack or rsp", "LEAVE": "uses the stack or rsp",
    "XBEGIN": "control flow (a transaction)", "XEND": "control flow (a transaction)",
    "XABORT": "control flow (a transaction)", "MONITOR": "privileged", "MWAIT": "privileged",
}
_FORBIDDEN_GROUPS = {"jump": "control flow (a jump)", "call": "control flow (a call)",
                     "ret": "control flow (a return)", "int": "control flow (a trap or "
                     "system call)", "iret": "control flow (an interrupt return)",
                     "branch_relative": "control flow (a relative branch)",
                     "privilege": "privileged"}

_decoder = None
_forbidden_ids: dict[int, str] = {}


def template_decoder():
    """capstone in detail mode, or None when the extra pvpatch[disasm] is not installed."""
    global _decoder
    if _decoder is None:
        try:
            import capstone
        except ImportError:
            return None
        md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        md.detail = True
        md.syntax = capstone.CS_OPT_SYNTAX_ATT  # as `pvpatch sites --disasm` prints
        from capstone import x86_const
        _forbidden_ids.update({getattr(x86_const, f"X86_INS_{n}"): why
                               for n, why in _FORBIDDEN_INSNS.items()
                               if hasattr(x86_const, f"X86_INS_{n}")})
        _decoder = md
    return _decoder


def check_template(code: bytes) -> str:
    """Check `code` against the template ABI; return its disassembly, or raise TemplateError
    naming the rule it breaks.  Needs capstone (template_decoder() is not None)."""
    md = template_decoder()
    if md is None:
        raise RuntimeError("check_template needs capstone (pip install 'pvpatch[disasm]')")
    if not code:
        raise TemplateError("empty template")
    if len(code) > MAX_INSN:
        raise TemplateError(f"{len(code)} bytes, longer than any instruction ({MAX_INSN})")
    insns = []
    used = 0
    for insn in md.disasm(code, 0):
        insns.append(insn)
        used += insn.size
    if not insns:
        raise TemplateError(f"{code.hex()} is not a whole instruction (truncated or invalid)")
    first = insns[0]
    asm = f"{first.mnemonic} {first.op_str}".strip()
    if first.size != len(code):
        if used == len(code):
            listing = "; ".join(f"{i.mnemonic} {i.op_str}".strip() for i in insns)
            raise TemplateError(f"{len(insns)} instructions ({listing}), not one")
        raise TemplateError(f"{code[first.size:].hex()} after {asm!r} is not a whole "
                            f"instruction (decoded length {first.size} of {len(code)} bytes)")
    if first.id in _forbidden_ids:
        raise TemplateError(f"{asm!r}: {_forbidden_ids[first.id]}")
    for g in first.groups:
        name = first.group_name(g)
        if name in _FORBIDDEN_GROUPS:
            raise TemplateError(f"{asm!r}: {_FORBIDDEN_GROUPS[name]}")
    read, written = first.regs_access()
    read = {_GPR_FAMILY.get(first.reg_name(r), first.reg_name(r)) for r in read}
    written = {_GPR_FAMILY.get(first.reg_name(r), first.reg_name(r)) for r in written}
    if "rip" in read or "rip" in written:
        raise TemplateError(f"{asm!r}: RIP-relative (a template runs out of line from a slot "
                            f"too: it must be position-independent)")
    if _STACK in read or _STACK in written:
        raise TemplateError(f"{asm!r}: uses the stack or rsp")
    bad = sorted(written - TEMPLATE_WRITABLE)
    if bad:
        callee = [r for r in bad if r in ("rbx", "rbp", "r12", "r13", "r14", "r15")]
        what = ("a callee-saved register" if callee else "state outside the site's clobbers "
                "(rax rcx rdx rsi rdi r8-r11, flags, memory)")
        raise TemplateError(f"{asm!r}: writes {', '.join(bad)}: {what}")
    return asm
