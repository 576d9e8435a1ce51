"""The op registry: groups, their variants and ops, the registered modules and their sites.

A group is known by name across modules; every module that uses a group must declare the same
variants in the same order (each module brings its own implementations).  The native variant is
recorded when the first module declaring the group registers, and is the group's first current
variant.  Renderings of every site for every variant are computed once, at registration, and kept
as flat per-group buffers so that planning a batch does no per-site work in Python.
"""
from __future__ import annotations

from array import array
from dataclasses import dataclass, field

from . import _core, cpufeatures as features, x86
from .descriptor import (F_BOOT, F_NOINLINE, GroupDesc, Impl, ModuleDesc, SiteRecord,
                         feature_names)
from .errors import RegistryError, SiteError

STRIDE = 16  # bytes per site in the flat rendering buffers (a site is at most 15)

# Templates that ship with pvpatch (its C core) and are accepted without a decoder, with their
# disassembly (capstone, AT&T syntax): the C runtime's table (src/pvpatch/_core/plan.c), which
# also renders them.  The suite checks, with capstone, that these are exactly the core's
# templates and that each follows the template ABI (tests/test_templates.py).  Safety is a
# property of the bytes alone, so the table is keyed by them.  Any other template needs capstone
# (the extra pvpatch[disasm]) to be checked; without it, its sites render as calls to the
# implementation's function.  A template capstone checked is marked trusted in the C runtime as
# well (_core.trust_template), for the modules it registers itself.
SHIPPED_TEMPLATES = _core.shipped_templates()
UNCHECKED = ("template not checked: capstone is not installed (pip install "
             "'pvpatch[disasm]'), so the site calls the function")


def _unknown(kind: str, name: str, known) -> RegistryError:
    listed = ", ".join(sorted(known)) or "none"
    return RegistryError(f"unknown {kind} {name!r}; known: {listed}")


@dataclass
class Group:
    name: str
    variants: list[str]
    native: str
    ops: list[str]
    current: str

    def check_variant(self, variant: str) -> str:
        if variant not in self.variants:
            raise _unknown(f"variant of group {self.name!r}", variant, self.variants)
        return variant

    def check_op(self, op: str) -> str:
        if op not in self.ops:
            raise _unknown(f"op of group {self.name!r}", op, self.ops)
        return op


@dataclass
class Site:
    module: str
    record: SiteRecord
    group: str
    op: str
    renderings: dict[str, bytes]
    kinds: dict[str, str]
    impls: dict[str, Impl] = field(default_factory=dict)     # variant -> implementation
    trusted: dict[str, bool] = field(default_factory=dict)   # variant -> template checked

    def render(self, variant: str, effective: int) -> tuple[str, bytes]:
        """`variant`'s rendering under the CPU features `effective` (IMPL_NEEDS bits): inline
        only where the template is checked, the site allows it and every feature it needs is
        effective; else a call to the implementation's function (the kernel's ALTERNATIVE)."""
        impl = self.impls[variant]
        inline_ok = (not self.record.flags & F_NOINLINE and self.trusted.get(variant, False)
                     and not impl.needs & ~effective)
        return x86.render(self.addr, self.length, fn=impl.fn, template=impl.template,
                          is_nop=impl.is_nop, inline_ok=inline_ok)

    def gate(self, variant: str) -> str:
        """One line: why `variant` renders as it does here, when that is not the plain rule
        (a feature-gated template, or a template that could not be checked); else ""."""
        impl = self.impls.get(variant)
        if impl is None or not impl.template or impl.is_nop:
            return ""
        if not self.trusted.get(variant, False):
            return UNCHECKED
        if not impl.needs:
            return ""
        detected, masked = features.detected_bits(), features.masked_bits()
        parts = []
        for name in feature_names(impl.needs):
            bit = impl.needs & features.bit(name)
            parts.append(name if detected & bit and not masked & bit else
                         f"{name}(masked)" if detected & bit else f"{name}(absent)")
        return "needs " + "+".join(parts)

    @property
    def addr(self) -> int:
        return self.record.addr

    @property
    def length(self) -> int:
        return self.record.length

    @property
    def section(self) -> str:
        return self.record.section

    @property
    def name(self) -> str:
        return (f"{self.module}:{self.record.section}[{self.record.index}] "
                f"{self.group}.{self.op} at {self.addr:#x}")


@dataclass
class GroupTable:
    """One module's runtime sites of one group, in flat arrays for apply_batch."""
    addrs: array
    lens: bytes
    by_variant: dict[str, bytes]


@dataclass
class Module:
    name: str
    desc: ModuleDesc
    text: tuple[int, int]
    sites: list[Site]                       # runtime sites, patchable for good
    boot: list[Site] = field(default_factory=list)  # boot sites: as rendered at registration
    tables: dict[str, GroupTable] = field(default_factory=dict)
    boot_variants: dict[str, str] = field(default_factory=dict)  # group -> variant at boot
    boot_bytes_dropped: int = 0
    path: str = ""
    owner: int = 0          # the key of its site table in the C core (the descriptor address)
    identity: tuple[int, int] | None = None  # the loaded object's (l_addr, l_ld), if pinnable

    def build_tables(self) -> None:
        """The flat tables of each group, here and in the C runtime (rt.c), which switches
        them: every variant in the group's order, then the default."""
        by_group: dict[str, list[Site]] = {}
        for s in self.sites:
            by_group.setdefault(s.group, []).append(s)
        self.tables = {}
        for g, sites in by_group.items():
            variants = sites[0].renderings.keys()
            t = self.tables[g] = GroupTable(
                array("Q", [s.addr for s in sites]),
                bytes(s.length for s in sites),
                {v: b"".join(s.renderings[v].ljust(STRIDE, b"\0") for s in sites)
                 for v in variants})
            ops = sorted({s.op for s in sites})
            _core.rt_table_set(self.owner, self.name, g, ops, t.addrs.tobytes(), t.lens,
                               bytes(ops.index(s.op) for s in sites),
                               array("I", [s.record.index for s in sites]).tobytes(),
                               b"".join(t.by_variant[v] for v in variants if v != "default")
                               + t.by_variant["default"])

    def add_slots(self) -> None:
        """The module's op slots, in the C runtime: it points them at each group's variant."""
        for g in self.desc.groups:
            for op in g.ops:
                if op.slot:
                    _core.rt_slot_add(g.name, self.owner, op.slot, [i.fn for i in op.impls],
                                      op.slot_in_code)


class Registry:
    def __init__(self) -> None:
        self.groups: dict[str, Group] = {}
        self.modules: list[Module] = []
        # The CPU features templates may use now (detected and not masked); renderings follow
        # it, and cpufeatures.py re-renders the sites when it changes.
        self.effective: int = features.effective_bits()

    # -- lookups ----------------------------------------------------------------------------
    def group(self, name: str) -> Group:
        try:
            return self.groups[name]
        except KeyError:
            raise _unknown("group", name, self.groups) from None

    def module(self, name: str) -> Module:
        for m in self.modules:
            if m.name == name:
                return m
        raise _unknown("module", name, [m.name for m in self.modules])

    def sites(self, group: str | None = None) -> list[Site]:
        return [s for m in self.modules for s in m.sites if group is None or s.group == group]

    def site_at(self, addr: int) -> Site | None:
        for m in self.modules:
            for s in m.sites:
                if s.addr == addr:
                    return s
        return None

    # -- registration -----------------------------------------------------------------------
    def check_groups(self, desc: ModuleDesc) -> None:
        """A module's groups must agree with groups of the same name already registered."""
        for g in desc.groups:
            known = self.groups.get(g.name)
            if not g.variants:
                raise RegistryError(f"module {desc.name}: group {g.name!r} has no variants")
            if not 0 <= g.native < len(g.variants):
                raise RegistryError(f"module {desc.name}: group {g.name!r}: native variant "
                                    f"index {g.native} out of range")
            if known is not None and known.variants != g.variants:
                raise RegistryError(f"module {desc.name}: group {g.name!r} declares variants "
                                    f"{g.variants}, registered as {known.variants}")

    def adopt_groups(self, desc: ModuleDesc) -> None:
        for g in desc.groups:
            _core.rt_group_declare(g.name, list(g.variants), g.native, [o.name for o in g.ops])
            known = self.groups.get(g.name)
            if known is None:
                self.groups[g.name] = Group(g.name, list(g.variants), g.variants[g.native],
                                            [o.name for o in g.ops], g.variants[g.native])
            else:
                known.ops.extend(o.name for o in g.ops if o.name not in known.ops)

    def check_templates(self, desc: ModuleDesc) -> dict[tuple[int, int, int], bool]:
        """Check every template of a module against the template ABI (docs/extensions.md):
        {(group, op, variant) index: checked}.  A template that breaks it raises RegistryError
        naming the module, group, op and variant.  Without capstone, a template pvpatch ships
        (SHIPPED_TEMPLATES) is taken as checked and any other is not (its sites call)."""
        can_decode = x86.template_decoder() is not None
        out = {}
        for gi, g in enumerate(desc.groups):
            for oi, op in enumerate(g.ops):
                if len(op.impls) != len(g.variants):
                    continue
                for vi, impl in enumerate(op.impls):
                    if not impl.template or impl.is_nop:
                        continue
                    if can_decode:
                        try:
                            x86.check_template(impl.template)
                        except x86.TemplateError as exc:
                            raise RegistryError(
                                f"module {desc.name}: group {g.name!r}, op {op.name!r}, variant "
                                f"{g.variants[vi]!r}: template {impl.template.hex()} refused: "
                                f"{exc} (docs/extensions.md, the template ABI). Nothing was "
                                f"written.") from None
                        _core.trust_template(impl.template)
                        out[gi, oi, vi] = True
                    else:
                        out[gi, oi, vi] = impl.template in SHIPPED_TEMPLATES
        return out

    def plan_sites(self, desc: ModuleDesc, text: tuple[int, int],
                   read) -> tuple[list[Site], list[Site]]:
        """Check every template and every record of a module and render its sites.  Raises
        RegistryError naming the first bad template or SiteError naming the first bad site;
        nothing has been written then.  `read(addr, n)` reads memory."""
        checked = self.check_templates(desc)
        start, end = text
        out: dict[str, list[Site]] = {"runtime": [], "boot": []}
        previous_end = 0
        records = sorted(desc.runtime + desc.boot, key=lambda r: r.addr)
        for rec in records:
            where = f"{desc.name}:{rec.section}[{rec.index}] at {rec.addr:#x}"
            if not (start <= rec.addr and rec.addr + rec.length <= end):
                raise SiteError(where, f"outside the module's text [{start:#x}, {end:#x})")
            if rec.length < x86.CALL_SLOT_LEN:
                raise SiteError(where, f"length {rec.length} is too short for any rendering "
                                       f"(at least {x86.CALL_SLOT_LEN})")
            if rec.length > x86.MAX_INSN:
                raise SiteError(where, f"length {rec.length} is longer than one instruction "
                                       f"({x86.MAX_INSN})")
            if rec.addr < previous_end:
                raise SiteError(where, "overlaps the previous site")
            previous_end = rec.addr + rec.length
            if rec.group >= len(desc.groups):
                raise SiteError(where, f"unknown group index {rec.group} "
                                       f"(the module has {len(desc.groups)})")
            g: GroupDesc = desc.groups[rec.group]
            if rec.op >= len(g.ops):
                raise SiteError(where, f"unknown op index {rec.op} in group {g.name!r} "
                                       f"(ops: {', '.join(o.name for o in g.ops)})")
            op = g.ops[rec.op]
            where = f"{desc.name}:{rec.section}[{rec.index}] {g.name}.{op.name} at {rec.addr:#x}"
            expected = x86.default_site(rec.addr, op.slot, rec.length)
            actual = read(rec.addr, rec.length)
            if actual != expected:
                # A debugger's breakpoint is refused, not copied into a rendering: registration
                # would otherwise erase it (or keep an int3 gdb no longer knows about).
                trap = any(a == 0xCC and e != 0xCC for a, e in zip(actual, expected))
                raise SiteError(where, f"bytes {actual.hex()} are not the default "
                                       f"{expected.hex()} (call *slot(%rip) stretched with CS "
                                       f"prefixes; a module built with an older pvpatch.h must "
                                       f"be rebuilt)"
                                       + ("; an int3 is there (a debugger's breakpoint? remove "
                                          "it, register, then set it again)" if trap else ""))
            site = Site(desc.name, rec, g.name, op.name, {}, {}, dict(zip(g.variants, op.impls)),
                        {v: checked.get((rec.group, rec.op, vi), False)
                         for vi, v in enumerate(g.variants)})
            for v in g.variants:
                try:
                    # Both renderings a feature gate can choose must encode.
                    if site.impls[v].needs:
                        site.render(v, 0)
                    site.kinds[v], site.renderings[v] = site.render(v, self.effective)
                except x86.EncodeError as exc:
                    raise SiteError(where, f"variant {v!r}: {exc}") from None
            site.renderings["default"], site.kinds["default"] = expected, "default"
            section = "boot" if rec.flags & F_BOOT or rec.section == "boot" else "runtime"
            out[section].append(site)
        return out["runtime"], out["boot"]

    def plan_rerender(self, effective: int) -> list[tuple[Module, Site, dict]]:
        """What every runtime site becomes under the CPU features `effective`: [(module, site,
        {variant: (kind, bytes)})] for the sites where some variant's rendering changes.  Changes
        nothing."""
        out = []
        for m in self.modules:
            for s in m.sites:
                new = {v: s.render(v, effective) for v in s.impls}
                changed = {v: kc for v, kc in new.items() if s.renderings[v] != kc[1]}
                if changed:
                    out.append((m, s, changed))
        return out
