"""Registration (boot-time patching) and runtime_patch: stage, plan, apply one batch, commit.

The batch itself is applied by the C core (_core.apply_batch, see src/pvpatch/_core/poke.c and
docs/protocol.md); this module decides what goes into it.
"""
from __future__ import annotations

import ctypes
import os
import threading
import time
from array import array
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from . import _core
from .descriptor import ModuleDesc, capsule_address, read_module
from .errors import BatchRefused, PvpatchError, RegistryError, syscall_error
from .registry import STRIDE, Module, Registry, Site

registry = Registry()
_lock = threading.RLock()          # serialises registration and runtime_patch
_remapped: dict[int, int] = {}      # text start -> alias delta
events: deque = deque(maxlen=1000)  # PatchEvent, newest last
_transitions: dict[str, Callable] = {}


@dataclass
class PatchEvent:
    """What one runtime_patch (or registration) did."""
    time: float                                   # wall clock at the start
    changes: dict[str, tuple[str, str]]           # group -> (from, to)
    sites: int = 0
    batches: int = 0
    syncs: int = 0
    traps: int = 0
    traps_helped: int = 0
    traps_on_patcher: int = 0
    duration_s: float = 0.0
    batch_ns: list[float] = field(default_factory=list)
    kind: str = "runtime_patch"

    def as_dict(self) -> dict:
        return {"time": self.time, "kind": self.kind,
                "changes": {g: list(v) for g, v in self.changes.items()},
                "sites": self.sites, "batches": self.batches, "syncs": self.syncs,
                "traps": self.traps, "traps_helped": self.traps_helped,
                "traps_on_patcher": self.traps_on_patcher, "duration_s": self.duration_s}


def _read(addr: int, n: int) -> bytes:
    return _core.read(addr, n)


def _apply(entries: list[tuple[array, array, bytes, bytes, bytes]], hook: int = 0) -> dict:
    """Apply one batch made of flat (addrs, aliases, lens, old, new) pieces."""
    addrs, aliases = array("Q"), array("Q")
    lens, old, new = bytearray(), bytearray(), bytearray()
    for a, al, ln, o, n in entries:
        addrs.extend(a)
        aliases.extend(al)
        lens += ln
        old += o
        new += n
    if not lens:
        return {"sites": 0, "syncs": 0, "ns": 0.0, "traps": 0, "traps_helped": 0,
                "traps_on_patcher": 0, "stale_traps": 0, "flips": 0, "trapping": 0,
                "late_sync_errno": 0}
    # No look at other threads' signal masks: a batch never waits for, or refuses because of,
    # another thread (docs/protocol.md, "SIGTRAP blocked").
    try:
        _core.install_trap_handler()
        res = _core.apply_batch(addrs.tobytes(), aliases.tobytes(), bytes(lens), bytes(old),
                                bytes(new), hook)
    except ValueError as exc:
        reason, addr = exc.args if len(exc.args) == 2 else (str(exc), -1)
        site = registry.site_at(addr)
        what = site.name if site else f"at {addr:#x}"
        raise BatchRefused(f"refused: site {what}: {reason}. Nothing was written.") from None
    except OSError as exc:
        raise syscall_error(exc) from None
    return res


def _set_slots(group: str, variant: str) -> None:
    """Point every op slot of `group` at `variant`'s implementation, in every module."""
    for m in registry.modules:
        for g in m.desc.groups:
            if g.name != group:
                continue
            vi = g.variants.index(variant)
            for op in g.ops:
                if op.slot:
                    where = op.slot_alias or op.slot
                    ctypes.c_void_p.from_address(where).value = op.impls[vi].fn


# ---- registration -------------------------------------------------------------------------

def _alias_for(text: tuple[int, int], name: str) -> int:
    start, end = text
    if start not in _remapped:
        try:
            _, alias = _core.remap_text(start, end - start, f"pvpatch-text:{name}")
        except OSError as exc:
            raise syscall_error(exc) from None
        _remapped[start] = alias - start
    return _remapped[start]


def register_desc(desc: ModuleDesc, *, text: tuple[int, int] | None = None,
                  alias_delta: int | None = None, path: str = "") -> Module:
    """Register a module from its descriptor: check every site, then patch every site (runtime
    and boot) from its default to the current variant in one batch, then drop the boot records.
    Any error names the site and patches nothing."""
    with _lock:
        if any(m.name == desc.name for m in registry.modules):
            raise RegistryError(f"module {desc.name!r} is already registered")
        registry.check_groups(desc)
        records = desc.runtime + desc.boot
        if text is None:
            if not records:
                raise RegistryError(f"module {desc.name!r} has no sites")
            seg = _core.text_segment(records[0].addr)
            if seg is None:
                raise PvpatchError(f"module {desc.name!r}: site {records[0].addr:#x} is in no "
                                   f"loaded object's executable segment")
            text, path = (seg[0], seg[1]), seg[2]
        # Check and render before touching anything (the remap changes no byte either).
        plan_delta = alias_delta if alias_delta is not None else 0
        runtime, boot = registry.plan_sites(desc, text, plan_delta, _read)
        if alias_delta is None:
            alias_delta = _alias_for(text, desc.name)
            for s in runtime + boot:
                s.alias = s.addr + alias_delta
        # A group new to the registry starts at its native variant; a known one at its current.
        start = {g.name: (registry.groups[g.name].current if g.name in registry.groups
                          else g.variants[g.native]) for g in desc.groups}
        mod = Module(desc.name, desc, text, alias_delta, runtime, path=path)
        _core.add_known_sites(array("Q", [s.addr for s in runtime + boot]).tobytes())
        ev = PatchEvent(time.time(), {}, kind="register")
        t0 = time.perf_counter()
        todo = runtime + boot

        def flat(variant_of) -> bytes:
            return b"".join(s.renderings[variant_of(s)].ljust(STRIDE, b"\0") for s in todo)

        res = _apply([(array("Q", [s.addr for s in todo]), array("Q", [s.alias for s in todo]),
                       bytes(s.length for s in todo), flat(lambda s: "default"),
                       flat(lambda s: start[s.group]))])
        registry.adopt_groups(desc)  # only once its sites are patched
        _account(ev, res)
        ev.duration_s = time.perf_counter() - t0
        # Boot records are dropped: those sites are never patched again.  What stays is a note
        # of what they became, for `pvpatch sites`.
        mod.boot = boot
        mod.boot_variants = {s.group: registry.groups[s.group].current for s in boot}
        mod.boot_bytes_dropped = desc.section_bytes.get("boot", 0)
        desc.boot = []
        mod.build_tables()
        registry.modules.append(mod)
        for g in desc.groups:
            _set_slots(g.name, registry.groups[g.name].current)
        events.append(ev)
        return mod


def register_module(module) -> Module:
    """Register an extension module that exported its descriptor with pvpatch_export()."""
    cap = getattr(module, "__pvpatch__", None)
    if cap is None:
        raise PvpatchError(f"{getattr(module, '__name__', module)!r} exports no __pvpatch__ "
                           f"capsule (call pvpatch_export() in its init function)")
    return register_desc(read_module(capsule_address(cap)))


# ---- runtime_patch ------------------------------------------------------------------------

def set_transition(group: str, fn: Callable | None) -> None:
    """Let `group` own its switches: runtime_patch then calls fn(current, target, apply), where
    apply(variant) moves the group to `variant` in one plain batch."""
    with _lock:
        if fn is None:
            _transitions.pop(group, None)
        else:
            _transitions[group] = fn


def _account(ev: PatchEvent, res: dict) -> None:
    ev.sites += res["sites"]
    ev.syncs += res["syncs"]
    ev.traps += res["traps"]
    ev.traps_helped += res["traps_helped"]
    ev.traps_on_patcher += res["traps_on_patcher"]
    if res["sites"]:
        ev.batches += 1
        ev.batch_ns.append(res["ns"])


def _plain(changes: dict[str, str], ev: PatchEvent, hook: int = 0) -> None:
    """Move groups to variants in one batch and commit."""
    pieces = []
    for m in registry.modules:
        for g, target in changes.items():
            t = m.tables.get(g)
            cur = registry.groups[g].current
            if t is None or cur == target:
                continue
            pieces.append((t.addrs, t.aliases, t.lens, t.by_variant[cur], t.by_variant[target]))
    res = _apply(pieces, hook)
    _account(ev, res)
    for g, target in changes.items():           # commit
        registry.groups[g].current = target
        _set_slots(g, target)
    if res.get("late_sync_errno"):
        # Sync #3 failed after the sites were whole and new: committed, and said.
        e = res["late_sync_errno"]
        raise syscall_error(OSError(e, os.strerror(e), "membarrier"))


def runtime_patch(changes: dict[str, str], *, hook: int = 0) -> PatchEvent:
    """Switch groups to variants while threads run their sites: {group: variant, ...}.

    Every affected site of every registered module is patched in one batch (groups that own
    their transitions, like `lock`, take the batches their protocol needs).  Concurrent callers
    are serialised.  A refused batch changes nothing and raises BatchRefused."""
    with _lock:
        for g, v in changes.items():
            registry.group(g).check_variant(v)
        staged = {g: v for g, v in changes.items() if registry.groups[g].current != v}
        ev = PatchEvent(time.time(), {g: (registry.groups[g].current, v)
                                      for g, v in staged.items()})
        t0 = time.perf_counter()
        owned = {g: v for g, v in staged.items() if g in _transitions}
        plain = {g: v for g, v in staged.items() if g not in _transitions}
        if plain:
            _plain(plain, ev, hook)
        for g, v in owned.items():
            _transitions[g](registry.groups[g].current, v,
                            lambda variant, g=g: _plain({g: variant}, ev))
        ev.duration_s = time.perf_counter() - t0
        events.append(ev)
        return ev


def current() -> dict[str, str]:
    """{group: current variant} for every registered group."""
    return {g.name: g.current for g in registry.groups.values()}


def site_bytes(site: Site) -> bytes:
    return _read(site.addr, site.length)


# ---- re-rendering (CPU feature gates) -------------------------------------------------------

def rerender(effective: int) -> PatchEvent:
    """Re-render every runtime site whose rendering depends on the CPU features (templates
    gated with PVPATCH_IMPL_NEEDS_*) for the feature set `effective`, in one batch of the
    ordinary protocol; then commit the new renderings of every variant.  No group changes
    variant.  A refused batch raises and changes nothing (cpufeatures.py keeps its mask)."""
    with _lock:
        ev = PatchEvent(time.time(), {}, kind="features")
        t0 = time.perf_counter()
        plan = registry.plan_rerender(effective)
        todo = [(s, ch[registry.groups[s.group].current])
                for _, s, ch in plan if registry.groups[s.group].current in ch]
        res = _apply([(array("Q", [s.addr for s, _ in todo]),
                       array("Q", [s.alias for s, _ in todo]),
                       bytes(s.length for s, _ in todo),
                       b"".join(s.renderings[registry.groups[s.group].current].ljust(STRIDE, b"\0")
                                for s, _ in todo),
                       b"".join(code.ljust(STRIDE, b"\0") for s, (_, code) in todo))])
        _account(ev, res)
        # Commit: every variant's rendering (the current one is now in memory; the others are
        # what the next runtime_patch writes).
        for m, s, changed in plan:
            for v, (kind, code) in changed.items():
                s.kinds[v], s.renderings[v] = kind, code
        for m in {id(m): m for m, _, _ in plan}.values():
            m.build_tables()
        registry.effective = effective
        ev.duration_s = time.perf_counter() - t0
        events.append(ev)
        if res.get("late_sync_errno"):
            e = res["late_sync_errno"]
            raise syscall_error(OSError(e, os.strerror(e), "membarrier"))
        return ev
