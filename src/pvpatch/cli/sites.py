"""`pvpatch sites`: every site of every registered module, as it is now; of this process
(after --import MODULE ...) or of another one (--pid PID, read-only: see remote.py)."""
from __future__ import annotations

import importlib
import json

from .. import elfsites, patcher

from . import args as cliargs
from ..descriptor import SITE_RECORD_SIZE


PID_MAX = 1 << 22  # the kernel's PID_MAX_LIMIT on 64-bit
JSON_SCHEMA = 1  # --footprint --json; bumped when a field changes meaning


def site_rows() -> list[dict]:
    import pvpatch  # noqa: F401  (registers the core)

    rows = []
    for m in patcher.registry.modules:
        for s in m.sites + m.boot:
            variant = (patcher.registry.groups[s.group].current if s.section == "runtime"
                       else m.boot_variants.get(s.group, "?"))
            code = patcher.site_bytes(s)
            rows.append({"module": m.name, "section": s.section, "address": s.addr,
                         "length": s.length, "group": s.group, "op": s.op, "variant": variant,
                         "kind": s.kinds.get(variant, "?"), "bytes": code.hex(),
                         "gate": s.gate(variant) if s.section == "runtime" else ""})
    rows.sort(key=lambda r: r["address"])
    return rows


def import_modules(names: list[str]) -> None:
    """Import each module; one that exports __pvpatch__ and is not registered yet is
    registered (a package that registers its extension on import needs nothing more)."""
    import pvpatch
    from ..descriptor import capsule_address
    from ..errors import PvpatchError

    for name in names:
        try:
            mod = importlib.import_module(name)
        except ImportError as exc:
            raise PvpatchError(f"--import {name}: {exc}") from None
        cap = getattr(mod, "__pvpatch__", None)
        if cap is None:
            continue
        addr = capsule_address(cap)
        if not any(m.desc.addr == addr for m in patcher.registry.modules):
            pvpatch.register_module(mod)


def footprint() -> dict:
    import pvpatch  # noqa: F401

    sections = []
    for m in patcher.registry.modules:
        if m.path:
            for sec in elfsites.read_elf(m.path).sections:
                sections.append({"module": m.name, "path": m.path, **sec})
        else:
            sections.append({"module": m.name, "path": "", "name": "(generated)",
                             "size": len(m.sites) * SITE_RECORD_SIZE, "records": len(m.sites),
                             "vaddr": 0, "offset": 0, "align": 8})
    dropped = {m.name: m.boot_bytes_dropped for m in patcher.registry.modules
               if m.boot_bytes_dropped}
    return {"schema": JSON_SCHEMA, "sections": sections, "bytes_per_record": SITE_RECORD_SIZE,
            "boot_records_dropped_bytes": dropped}


def run(args) -> int:
    if args.pid is not None and (args.imports or args.footprint):
        from ..errors import PvpatchError
        raise PvpatchError("--pid reads another process: it takes neither --import nor "
                           "--footprint")
    if args.imports:
        import_modules(args.imports)
    if args.footprint:
        fp = footprint()
        if args.json:
            print(json.dumps(fp, indent=2))
            return 0
        # objdump -h layout
        print("Idx Name                 Size      VMA               File-off  Algn  Records")
        for i, s in enumerate(fp["sections"]):
            align = max(s["align"], 1).bit_length() - 1
            print(f"{i:3d} {s['name']:<20} {s['size']:08x}  {s['vaddr']:016x}  "
                  f"{s['offset']:08x}  2**{align:<3d} {s['records']:7d}  {s['module']}")
        print(f"{fp['bytes_per_record']} bytes per site record "
              f"(the kernel's parainstructions entry: 16)")
        for mod, n in fp["boot_records_dropped_bytes"].items():
            print(f"{mod}: {n} bytes of boot-only records dropped after registration")
        return 0
    if args.pid is not None:
        from ..remote import site_rows as remote_rows
        rows = remote_rows(args.pid)
    else:
        rows = site_rows()
    if args.disasm:
        from ..disasm import text
        for r in rows:
            try:
                r["disasm"] = text(bytes.fromhex(r["bytes"]), r["address"])
            except ValueError as exc:  # a remote site read in the middle of a batch
                r["disasm"] = f"({exc})"
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'module':<16} {'section':<7} {'address':<14} {'len':>3}  {'group.op':<16} "
          f"{'variant':<8} {'kind':<7} bytes")
    for r in rows:
        line = (f"{r['module']:<16} {r['section']:<7} {r['address']:#014x} {r['length']:>3}  "
                f"{r['group'] + '.' + r['op']:<16} {r['variant']:<8} {r['kind']:<7} {r['bytes']}")
        if args.disasm:
            line += f"  {r['disasm']}"
        if r.get("gate"):  # a feature-gated template, or one that could not be checked (local rows)
            line += f"  [{r['gate']}]"
        print(line)
    return 0


def register(sub) -> None:
    p = sub.add_parser("sites", help="list every patchable site and its current rendering",
                       description="Every site of every registered module: module, section "
                                   "(runtime or boot), address, length, group.op, current "
                                   "variant and current bytes; in brackets, a CPU-feature gate "
                                   "of the site's template, or why its template is not used.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--disasm", action="store_true", help="disassemble each site (capstone)")
    p.add_argument("--footprint", action="store_true",
                   help="section sizes, as objdump -h prints them, and bytes per site record")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   type=cliargs.nonempty("module name"),
                   help="import MODULE first and register it if it exports __pvpatch__ "
                        "(repeatable)")
    p.add_argument("--pid", type=cliargs.integer(1, PID_MAX), metavar="PID",
                   help="list the sites of process PID instead, read-only from /proc/PID/maps, "
                        "the ELF files and /proc/PID/mem (variant derived from the live bytes; "
                        "'default': the module is not registered there)")
    p.set_defaults(func=run)
