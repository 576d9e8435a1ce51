"""Sites of another process, read-only: `pvpatch sites --pid PID`.

Nothing of the other process is stopped, attached or written.  What is read:

1. /proc/PID/maps: the ELF files the process maps, and where;
2. each file's section headers (pyelftools): objects with a pvpatch_runtime or pvpatch_boot
   section, and the file offset of their `pvpatch_module` descriptor's symbol;
3. /proc/PID/mem: the descriptor and everything it points to (pointers there are already
   relocated), the site records (PC-relative), and the live bytes of every site.

The variant a site runs is derived from its bytes: each variant's rendering is computed as
registration computes it (x86.render) and compared, so what is shown is what the process
executes.  A module whose sites all hold their build-time default is not registered there.  A
site that starts with int3 is being patched at the moment of the read.

Reading /proc/PID/mem needs ptrace read access to the process (the same user and a dumpable
process, or CAP_SYS_PTRACE; Yama's ptrace_scope may restrict it further).
"""
from __future__ import annotations

import ctypes
import errno as errno_mod
import os
import stat
import struct
from dataclasses import dataclass

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from . import x86
from .descriptor import (ABI_VERSION, F_NOINLINE, IMPL_NOP, MODULE_MAGIC, SECTIONS,
                         SITE_RECORD_SIZE, CGroup, CImpl, CModule, COp, decode_records)
from .errors import PvpatchError

INT3 = 0xCC
MAX_GROUPS = 256   # a record's group and op are bytes
MAX_VARIANTS = 256
MAX_RECORDS = 1 << 20


class RemoteError(PvpatchError):
    """Another process's sites cannot be read; errno says why when a syscall said so."""

    def __init__(self, msg: str, errno: int = 0):
        super().__init__(msg)
        self.errno = errno


@dataclass
class Mapping:
    start: int
    end: int
    perms: str
    offset: int
    path: str


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def _denied(pid: int, what: str, exc: OSError) -> RemoteError:
    return RemoteError(f"process {pid} ({_comm(pid)}): cannot read {what}: {exc.strerror}; "
                       f"reading another process needs ptrace read access to it (the same user "
                       f"and a dumpable process, or CAP_SYS_PTRACE)", exc.errno)


def read_maps(pid: int) -> list[Mapping]:
    try:
        with open(f"/proc/{pid}/maps") as f:
            text = f.read()
    except FileNotFoundError:
        raise RemoteError(f"no process with pid {pid}", errno_mod.ESRCH) from None
    except PermissionError as exc:
        raise _denied(pid, f"/proc/{pid}/maps", exc) from None
    except ProcessLookupError:
        raise RemoteError(f"no process with pid {pid}", errno_mod.ESRCH) from None
    out = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5:
            continue
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        out.append(Mapping(lo, hi, parts[1], int(parts[2], 16),
                           parts[5].strip() if len(parts) == 6 else ""))
    return out


class ProcMem:
    """Reads another process's memory through /proc/PID/mem (pread: no ptrace stop)."""

    def __init__(self, pid: int):
        self.pid = pid
        try:
            self.fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise RemoteError(f"no process with pid {pid}", errno_mod.ESRCH) from None
        except PermissionError as exc:
            raise _denied(pid, f"/proc/{pid}/mem", exc) from None

    def close(self) -> None:
        os.close(self.fd)

    def read(self, addr: int, n: int) -> bytes:
        try:
            data = os.pread(self.fd, n, addr)
        except OSError as exc:
            raise RemoteError(f"process {self.pid}: reading {n} bytes at {addr:#x}: "
                              f"{exc.strerror}", exc.errno) from None
        if len(data) != n:
            raise RemoteError(f"process {self.pid}: reading {n} bytes at {addr:#x}: short read "
                              f"({len(data)}); did the process exit?", errno_mod.EIO)
        return data

    def ptr(self, addr: int) -> int:
        return struct.unpack("<Q", self.read(addr, 8))[0]

    def cstr(self, addr: int, limit: int = 256) -> str:
        out = b""
        while len(out) < limit:
            chunk = self.read(addr + len(out), 1)
            if chunk == b"\0":
                return out.decode(errors="replace")
            out += chunk
        raise RemoteError(f"process {self.pid}: unterminated string at {addr:#x}")

    def read_struct(self, ctype, addr: int):
        return ctype.from_buffer_copy(self.read(addr, ctypes.sizeof(ctype)))


@dataclass
class _Object:
    path: str
    base: int
    desc_vaddr: int


def _open_mapped(pid: int, m: Mapping):
    """The file behind a mapping: the mapped file itself through /proc/PID/map_files (right
    even if the path was replaced or deleted since; needs CAP_SYS_ADMIN or checkpoint-restore
    rights), else the path in the process's root, else the path as it reads here."""
    path = m.path.removesuffix(" (deleted)")
    for cand in (f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}", f"/proc/{pid}/root{path}",
                 path):
        try:
            return open(cand, "rb")
        except OSError:
            continue
    return None


def _site_objects(pid: int, maps: list[Mapping]) -> list[_Object]:
    """Mapped ELF files with pvpatch site sections, with their load base."""
    by_path: dict[str, list[Mapping]] = {}
    for m in maps:
        if m.path.startswith("/") and not m.path.startswith("/memfd:"):
            by_path.setdefault(m.path, []).append(m)
    out = []
    for path, ms in by_path.items():
        # Any mapping of the file counts: once registered, an object's executable segment may
        # be a memfd copy of its text (see patcher), while its other segments keep the path.
        first = min(ms, key=lambda m: m.offset)
        f = _open_mapped(pid, first)
        if f is None:
            continue
        path = path.removesuffix(" (deleted)")
        try:
            with f:
                # Regular files only: reading a mapped device could have side effects.
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode) or f.read(4) != b"\x7fELF":
                    continue
                f.seek(0)
                elf = ELFFile(f)
                if not any(elf.get_section_by_name(s) is not None for s in SECTIONS.values()):
                    continue
                tab = elf.get_section_by_name(".symtab") or elf.get_section_by_name(".dynsym")
                sym = None
                if tab is not None:
                    sym = next((s for s in tab.iter_symbols() if s.name == "pvpatch_module"),
                               None)
                if sym is None:
                    raise RemoteError(f"{path}: has pvpatch site sections but no "
                                      f"pvpatch_module symbol (stripped?)")
                if elf["e_type"] == "ET_EXEC":
                    base = 0
                else:
                    seg = next((s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD" and
                                s["p_offset"] & ~0xFFF <= first.offset <
                                s["p_offset"] + s["p_filesz"]), None)
                    if seg is None:
                        continue
                    base = first.start - ((seg["p_vaddr"] & ~0xFFF) +
                                          (first.offset - (seg["p_offset"] & ~0xFFF)))
                out.append(_Object(path, base, sym["st_value"]))
        except (OSError, ELFError, struct.error):
            continue  # not a readable ELF file: nothing of ours
    return out


def _records(mem: ProcMem, start: int, stop: int, section: str):
    if not start or not stop:
        return []
    n = stop - start
    if n < 0 or n % SITE_RECORD_SIZE or n // SITE_RECORD_SIZE > MAX_RECORDS:
        raise RemoteError(f"process {mem.pid}: site section {SECTIONS[section]} at "
                          f"{start:#x}..{stop:#x} is not a table of records")
    return decode_records(mem.read(start, n), start, section)


def module_rows(mem: ProcMem, obj: _Object) -> tuple[str, list[dict]]:
    addr = obj.base + obj.desc_vaddr
    m = mem.read_struct(CModule, addr)
    if m.magic != MODULE_MAGIC or m.abi_version != ABI_VERSION:
        raise RemoteError(f"process {mem.pid}: {obj.path}: descriptor at {addr:#x} has magic "
                          f"{m.magic:#x} / ABI {m.abi_version}, expected {MODULE_MAGIC:#x} / "
                          f"{ABI_VERSION}")
    if m.ngroups > MAX_GROUPS:
        raise RemoteError(f"process {mem.pid}: {obj.path}: {m.ngroups} groups")
    modname = mem.cstr(mem.ptr(addr + CModule.name.offset))
    groups = []
    for gi in range(m.ngroups):
        g = mem.read_struct(CGroup, m.groups + gi * ctypes.sizeof(CGroup))
        if g.nvariants > MAX_VARIANTS or g.nops > MAX_GROUPS:
            raise RemoteError(f"process {mem.pid}: {obj.path}: group {gi} is malformed")
        gname = mem.cstr(mem.ptr(m.groups + gi * ctypes.sizeof(CGroup) + CGroup.name.offset))
        variants = [mem.cstr(mem.ptr(g.variants + 8 * vi)) for vi in range(g.nvariants)]
        ops = []
        for oi in range(g.nops):
            oat = g.ops + oi * ctypes.sizeof(COp)
            op = mem.read_struct(COp, oat)
            impls = []
            for vi in range(g.nvariants):
                im = mem.read_struct(CImpl, op.impls + vi * ctypes.sizeof(CImpl))
                tmpl = mem.read(im.tmpl, im.tmpl_len) if im.tmpl and 0 < im.tmpl_len <= 15 \
                    else None
                impls.append((im.fn or 0, tmpl, bool(im.flags & IMPL_NOP)))
            ops.append((mem.cstr(mem.ptr(oat + COp.name.offset)), op.slot or 0, impls))
        groups.append((gname, variants, ops))
    rows = []
    records = (_records(mem, m.runtime_start, m.runtime_stop, "runtime") +
               _records(mem, m.boot_start, m.boot_stop, "boot"))
    for r in records:
        if r.group >= len(groups) or r.op >= len(groups[r.group][2]) or \
                not x86.CALL_SLOT_LEN <= r.length <= x86.MAX_INSN:
            raise RemoteError(f"process {mem.pid}: {modname}: {SECTIONS[r.section]}[{r.index}] "
                              f"is malformed (group {r.group}, op {r.op}, length {r.length})")
        gname, variants, ops = groups[r.group]
        opname, slot, impls = ops[r.op]
        live = mem.read(r.addr, r.length)
        cands: dict[str, str] = {}  # variant -> kind, for every variant rendered as `live`
        if live == x86.default_site(r.addr, slot, r.length):
            cands = {"default": "default"}
        elif live[0] == INT3:
            cands = {"patching": "patching"}
        else:
            for v, (fn, tmpl, is_nop) in zip(variants, impls):
                try:
                    k, code = x86.render(r.addr, r.length, fn=fn, template=tmpl, is_nop=is_nop,
                                         inline_ok=not r.flags & F_NOINLINE)
                except x86.EncodeError:
                    continue
                if code == live:
                    cands[v] = k
        rows.append({"module": modname, "section": r.section, "address": r.addr,
                     "length": r.length, "group": gname, "op": opname, "candidates": cands,
                     "bytes": live.hex(), "path": obj.path})
    return modname, rows


def _resolve(rows: list[dict]) -> None:
    """Name each site's variant.  One site's bytes may fit several variants (two variants that
    both render an op as a NOP); the runtime sites of a group all run the group's variant, so
    the variant is the one every runtime site of the group fits.  Boot sites were rendered
    once each, so only their own bytes count.  What stays ambiguous is shown as "a|b"."""
    fits: dict[str, set] = {}
    for r in rows:
        c = r["candidates"]
        if r["section"] == "runtime" and c and not {"default", "patching"} & c.keys():
            fits[r["group"]] = fits.get(r["group"], set(c)) & set(c)
    registered = {r["module"] for r in rows if "default" not in r["candidates"]}
    for r in rows:
        c = r.pop("candidates")
        group_fit = fits.get(r["group"], set()) if r["section"] == "runtime" else set()
        if len(group_fit) == 1 and next(iter(group_fit)) in c:
            r["variant"] = next(iter(group_fit))
        else:
            r["variant"] = "|".join(c) if c else "?"
        r["kind"] = c.get(r["variant"], "|".join(sorted(set(c.values()))) or "?")
        r["registered"] = r["module"] in registered


def site_rows(pid: int) -> list[dict]:
    """Every site of every module with pvpatch sites in process `pid`, as it is now."""
    if pid <= 0:
        raise RemoteError(f"pid {pid} is not a process id", errno_mod.EINVAL)
    maps = read_maps(pid)
    objs = _site_objects(pid, maps)
    if not objs:
        raise RemoteError(f"process {pid} ({_comm(pid)}) maps no object with pvpatch sites "
                          f"(no pvpatch_runtime or pvpatch_boot section): it does not use "
                          f"pvpatch")
    mem = ProcMem(pid)
    try:
        rows = []
        for o in objs:
            rows += module_rows(mem, o)[1]
    finally:
        mem.close()
    _resolve(rows)
    rows.sort(key=lambda r: r["address"])
    return rows
