"""`pvpatch sites`: every site of every registered module, as it is now."""
from __future__ import annotations

import json

from . import elfsites, patcher
from .descriptor import SITE_RECORD_SIZE


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
    rows = site_rows()
    if args.disasm:
        from .disasm import text
        for r in rows:
            r["disasm"] = text(bytes.fromhex(r["bytes"]), r["address"])
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
        if r["gate"]:  # a feature-gated template, or one that could not be checked
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
    p.set_defaults(func=run)
