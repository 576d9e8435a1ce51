"""Site tables read from an ELF file on disk (pyelftools), to check against the live table.

The records of pvpatch_runtime / pvpatch_boot are PC-relative, so they decode without
relocations.  Group and op names come from the module's `pvpatch_module` descriptor, whose
pointers in a shared object are R_X86_64_RELATIVE relocations: their addends are the values.
"""
from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from .descriptor import (ABI_VERSION, MODULE_MAGIC, SECTIONS, CGroup, CModule, COp,
                         SiteRecord, decode_records)
from .errors import ElfError

R_X86_64_64 = 1
R_X86_64_RELATIVE = 8


@dataclass
class ElfSite:
    section: str
    index: int
    vaddr: int       # link-time address; live address = load base + vaddr
    length: int
    group: str
    op: str
    flags: int
    function: str    # the symbol holding the site, or ""


@dataclass
class ElfSites:
    path: str
    module: str
    sites: list[ElfSite]
    sections: list[dict]   # {"name", "size", "records", "vaddr", "offset", "align"}


class _Image:
    """Reads the file's loaded image by virtual address, with RELATIVE relocations applied."""

    def __init__(self, elf: ELFFile):
        self.elf = elf
        # Pointer-sized values the dynamic linker fills in: RELATIVE (base + addend) and, for
        # symbols the object defines with default visibility, 64 (symbol + addend).
        self.relative: dict[int, int] = {}
        for sec in elf.iter_sections():
            if isinstance(sec, RelocationSection) and sec.is_RELA():
                symtab = elf.get_section(sec["sh_link"]) if sec["sh_link"] else None
                for r in sec.iter_relocations():
                    if r["r_info_type"] == R_X86_64_RELATIVE:
                        self.relative[r["r_offset"]] = r["r_addend"]
                    elif r["r_info_type"] == R_X86_64_64 and symtab is not None:
                        sym = symtab.get_symbol(r["r_info_sym"])
                        if sym["st_shndx"] != "SHN_UNDEF":
                            self.relative[r["r_offset"]] = sym["st_value"] + r["r_addend"]

    def read(self, vaddr: int, n: int) -> bytes:
        for seg in self.elf.iter_segments():
            if seg["p_type"] != "PT_LOAD":
                continue
            lo, hi = seg["p_vaddr"], seg["p_vaddr"] + seg["p_filesz"]
            if lo <= vaddr and vaddr + n <= hi:
                self.elf.stream.seek(seg["p_offset"] + vaddr - lo)
                return self.elf.stream.read(n)
        raise ElfError(f"address {vaddr:#x} (+{n}) is not in any loaded segment")

    def ptr(self, vaddr: int) -> int:
        if vaddr in self.relative:
            return self.relative[vaddr]
        return struct.unpack("<Q", self.read(vaddr, 8))[0]

    def cstr(self, vaddr: int) -> str:
        out = b""
        while True:
            chunk = self.read(vaddr + len(out), 1)
            if chunk == b"\0":
                return out.decode()
            out += chunk
            if len(out) > 4096:
                raise ElfError(f"unterminated string at {vaddr:#x}")


def _symbols(elf: ELFFile):
    tab = elf.get_section_by_name(".symtab") or elf.get_section_by_name(".dynsym")
    return list(tab.iter_symbols()) if tab is not None else []


def read_elf(path: str) -> ElfSites:
    """Every site record of an ELF shared object, with group and op names."""
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            if elf["e_machine"] != "EM_X86_64":
                raise ElfError(f"{path}: not an x86-64 object ({elf['e_machine']})")
            img = _Image(elf)
            syms = _symbols(elf)
            desc = next((s for s in syms if s.name == "pvpatch_module"), None)
            if desc is None:
                raise ElfError(f"{path}: no pvpatch_module symbol (not built with pvpatch.h, "
                               f"or stripped)")
            raw = img.read(desc["st_value"], ctypes.sizeof(CModule))
            m = CModule.from_buffer_copy(raw)
            base = desc["st_value"]

            def field_ptr(off_name: str, struct_type, at: int) -> int:
                return img.ptr(at + getattr(struct_type, off_name).offset)

            if m.magic != MODULE_MAGIC or m.abi_version != ABI_VERSION:
                raise ElfError(f"{path}: pvpatch_module has magic {m.magic:#x} / ABI "
                               f"{m.abi_version}, expected {MODULE_MAGIC:#x} / {ABI_VERSION}")
            module = img.cstr(field_ptr("name", CModule, base))
            groups_at = field_ptr("groups", CModule, base)
            groups = []
            for gi in range(m.ngroups):
                gat = groups_at + gi * ctypes.sizeof(CGroup)
                g = CGroup.from_buffer_copy(img.read(gat, ctypes.sizeof(CGroup)))
                ops_at = field_ptr("ops", CGroup, gat)
                ops = [img.cstr(field_ptr("name", COp, ops_at + oi * ctypes.sizeof(COp)))
                       for oi in range(g.nops)]
                groups.append((img.cstr(field_ptr("name", CGroup, gat)), ops))
            funcs = sorted((s["st_value"], s["st_value"] + s["st_size"], s.name) for s in syms
                           if s["st_info"]["type"] == "STT_FUNC" and s["st_size"])
            sites, sections = [], []
            for kind, secname in SECTIONS.items():
                sec = elf.get_section_by_name(secname)
                if sec is None:
                    continue
                data = sec.data()
                recs: list[SiteRecord] = decode_records(data, sec["sh_addr"], kind)
                sections.append({"name": secname, "size": sec["sh_size"],
                                 "records": len(recs), "vaddr": sec["sh_addr"],
                                 "offset": sec["sh_offset"], "align": sec["sh_addralign"]})
                for r in recs:
                    if r.group >= len(groups):
                        raise ElfError(f"{path}: {secname}[{r.index}]: group index {r.group} "
                                       f"out of range")
                    gname, ops = groups[r.group]
                    if r.op >= len(ops):
                        raise ElfError(f"{path}: {secname}[{r.index}]: op index {r.op} out "
                                       f"of range for group {gname}")
                    fn = next((n for lo, hi, n in funcs if lo <= r.addr < hi), "")
                    sites.append(ElfSite(kind, r.index, r.addr, r.length, gname, ops[r.op],
                                         r.flags, fn))
            return ElfSites(path, module, sites, sections)
    except ELFError as exc:
        raise ElfError(f"{path}: {exc}") from None
    except (OSError, struct.error) as exc:
        raise ElfError(f"{path}: {exc}") from None


def load_base(path: str, live_text_start: int) -> int:
    """The load base of `path` in this process, from its executable segment's live start."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        for seg in elf.iter_segments():
            if seg["p_type"] == "PT_LOAD" and seg["p_flags"] & 1:
                return live_text_start - (seg["p_vaddr"] & ~0xFFF)
    raise ElfError(f"{path}: no executable segment")

