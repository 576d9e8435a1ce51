"""What a module exports: the pvpatch_module descriptor of include/pvpatch.h, read from memory.

The ctypes layouts here mirror the header one to one; tests compare their sizes with the C side.
The same data read from an ELF file on disk is in elfsites.py.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass, field

from .errors import PvpatchError

MODULE_MAGIC = 0x54505650
ABI_VERSION = 2  # 2: pvpatch_impl.flags may carry CPU feature bits (IMPL_NEEDS)
SITE_RECORD_SIZE = 8
F_BOOT = 0x01
F_NOINLINE = 0x02
F_UNALIGNED = 0x04  # no padding: the rel32 field of a call rendering may be unaligned
IMPL_NOP = 0x01
# CPU features an implementation's inline template needs (pvpatch_impl.flags, PVPATCH_IMPL_NEEDS_*
# in include/pvpatch.h): the template is rendered only where the CPU has all of them and policy
# has not masked any (cpufeatures.py); elsewhere the site calls the implementation's function.
IMPL_NEEDS = {"popcnt": 0x100, "lzcnt": 0x200, "bmi1": 0x400, "bmi2": 0x800, "avx2": 0x1000,
              "movbe": 0x2000, "avx512f": 0x4000}
IMPL_NEEDS_MASK = sum(IMPL_NEEDS.values())
IMPL_KNOWN_FLAGS = IMPL_NOP | IMPL_NEEDS_MASK


def feature_names(bits: int) -> list[str]:
    """The names of the feature bits set in `bits`, in IMPL_NEEDS order."""
    return [n for n, b in IMPL_NEEDS.items() if bits & b]
SECTIONS = {"runtime": "pvpatch_runtime", "boot": "pvpatch_boot"}


class CSite(ctypes.Structure):
    _fields_ = [("rel", ctypes.c_int32), ("len", ctypes.c_uint8), ("group", ctypes.c_uint8),
                ("op", ctypes.c_uint8), ("flags", ctypes.c_uint8)]


class CImpl(ctypes.Structure):
    _fields_ = [("fn", ctypes.c_void_p), ("tmpl", ctypes.c_void_p), ("tmpl_len", ctypes.c_uint32),
                ("flags", ctypes.c_uint32)]


class COp(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("slot", ctypes.c_void_p), ("impls", ctypes.c_void_p)]


class CGroup(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("variants", ctypes.c_void_p),
                ("nvariants", ctypes.c_uint32), ("native", ctypes.c_uint32),
                ("ops", ctypes.c_void_p), ("nops", ctypes.c_uint32), ("reserved", ctypes.c_uint32)]


class CModule(ctypes.Structure):
    _fields_ = [("magic", ctypes.c_uint32), ("abi_version", ctypes.c_uint32),
                ("name", ctypes.c_char_p), ("groups", ctypes.c_void_p),
                ("ngroups", ctypes.c_uint32), ("reserved", ctypes.c_uint32),
                ("runtime_start", ctypes.c_void_p), ("runtime_stop", ctypes.c_void_p),
                ("boot_start", ctypes.c_void_p), ("boot_stop", ctypes.c_void_p)]


assert ctypes.sizeof(CSite) == SITE_RECORD_SIZE


@dataclass(frozen=True)
class Impl:
    fn: int
    template: bytes | None = None
    is_nop: bool = False
    needs: int = 0          # IMPL_NEEDS bits: what the template needs of the CPU


@dataclass
class OpDesc:
    name: str
    slot: int               # where default sites read the op's function
    impls: list[Impl]
    slot_in_code: bool = False  # the slot lives in a code range: written with _core.write_code


@dataclass
class GroupDesc:
    name: str
    variants: list[str]
    native: int
    ops: list[OpDesc]


@dataclass(frozen=True)
class SiteRecord:
    """One record of a site table: where it is, and what it says."""
    section: str       # "runtime" or "boot"
    index: int         # position in its section
    record_addr: int   # address of the record itself
    addr: int          # address of the site
    length: int
    group: int         # index into the module's groups
    op: int            # index into the group's ops
    flags: int


@dataclass
class ModuleDesc:
    name: str
    addr: int                       # the descriptor's address (0 for generated code)
    groups: list[GroupDesc]
    runtime: list[SiteRecord]
    boot: list[SiteRecord]
    section_bytes: dict[str, int] = field(default_factory=dict)


def decode_records(raw: bytes, base: int, section: str) -> list[SiteRecord]:
    """Site records from the raw bytes of a section that starts at `base`."""
    if len(raw) % SITE_RECORD_SIZE:
        raise PvpatchError(f"section {SECTIONS[section]} is {len(raw)} bytes, "
                           f"not a multiple of {SITE_RECORD_SIZE}")
    out = []
    for i in range(len(raw) // SITE_RECORD_SIZE):
        rec = CSite.from_buffer_copy(raw, i * SITE_RECORD_SIZE)
        at = base + i * SITE_RECORD_SIZE
        out.append(SiteRecord(section, i, at, at + rec.rel, rec.len, rec.group, rec.op,
                              rec.flags))
    return out


_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


def capsule_address(capsule: object) -> int:
    try:
        return _capsule_pointer(capsule, b"pvpatch.module")
    except ValueError as exc:
        raise PvpatchError(f"not a pvpatch module capsule: {exc}") from None


def _records(start: int | None, stop: int | None, section: str) -> list[SiteRecord]:
    if not start or not stop:
        return []
    return decode_records(ctypes.string_at(start, stop - start), start, section)


def read_module(addr: int) -> ModuleDesc:
    """Read a live pvpatch_module descriptor at `addr`."""
    m = CModule.from_address(addr)
    if m.magic != MODULE_MAGIC:
        raise PvpatchError(f"descriptor at {addr:#x}: bad magic {m.magic:#x}")
    if m.abi_version != ABI_VERSION:
        raise PvpatchError(f"descriptor at {addr:#x}: ABI version {m.abi_version}, "
                           f"this pvpatch reads {ABI_VERSION}; rebuild the module against "
                           f"pvpatch.get_include()")
    groups = []
    for gi in range(m.ngroups):
        g = CGroup.from_address(m.groups + gi * ctypes.sizeof(CGroup))
        names = (ctypes.c_char_p * g.nvariants).from_address(g.variants)
        variants = [n.decode() for n in names]
        ops = []
        for oi in range(g.nops):
            op = COp.from_address(g.ops + oi * ctypes.sizeof(COp))
            impls = []
            for vi in range(g.nvariants):
                im = CImpl.from_address(op.impls + vi * ctypes.sizeof(CImpl))
                tmpl = ctypes.string_at(im.tmpl, im.tmpl_len) if im.tmpl and im.tmpl_len else None
                if im.flags & ~IMPL_KNOWN_FLAGS:
                    raise PvpatchError(
                        f"module {m.name.decode()}: group {g.name.decode()}, op "
                        f"{op.name.decode()}, variant {variants[vi]}: unknown implementation "
                        f"flags {im.flags & ~IMPL_KNOWN_FLAGS:#x} (a newer pvpatch.h?)")
                impls.append(Impl(im.fn or 0, tmpl, bool(im.flags & IMPL_NOP),
                                  im.flags & IMPL_NEEDS_MASK))
            ops.append(OpDesc(op.name.decode(), op.slot or 0, impls))
        groups.append(GroupDesc(g.name.decode(), variants, g.native, ops))
    runtime = _records(m.runtime_start, m.runtime_stop, "runtime")
    boot = _records(m.boot_start, m.boot_stop, "boot")
    return ModuleDesc(m.name.decode(), addr, groups, runtime, boot,
                      {"runtime": len(runtime) * SITE_RECORD_SIZE,
                       "boot": len(boot) * SITE_RECORD_SIZE})
