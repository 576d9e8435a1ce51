"""Registration (boot-time patching) and runtime_patch: stage, plan, apply one batch, commit.

The batch itself is applied by the C core (_core.apply_batch, see src/pvpatch/_core/poke.c and
docs/protocol.md); this module decides what goes into it.

The commit rule: a group's recorded variant is never trusted on its own.  It is checked against
the bytes of the group's sites (one C call) whenever it is read or used, and re-derived from them
when they disagree, so a Python exception at any point of runtime_patch -- KeyboardInterrupt, a
signal handler that raises -- can leave the record stale for a moment but never wrong where it
matters.  Each batch is all or nothing in C, with no Python code inside it.
"""
from __future__ import annotations

import ctypes
import itertools
import os
import threading
import time
import weakref
from array import array
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable

from . import _core
from .descriptor import ModuleDesc, capsule_address, read_module
from .errors import ArgumentError, BatchRefused, PvpatchError, RegistryError, syscall_error
from .registry import STRIDE, Module, Registry, Site

registry = Registry()
_lock = threading.RLock()          # serialises registration and runtime_patch
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


def _apply(entries: list[tuple[array, bytes, bytes, bytes]], hook: int = 0) -> dict:
    """Apply one batch made of flat (addrs, lens, old, new) pieces."""
    addrs = array("Q")
    lens, old, new = bytearray(), bytearray(), bytearray()
    for a, ln, o, n in entries:
        addrs.extend(a)
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
        res = _core.apply_batch(addrs.tobytes(), bytes(lens), bytes(old), bytes(new), hook)
    except ValueError as exc:
        reason, addr = exc.args if len(exc.args) == 2 else (str(exc), -1)
        site = registry.site_at(addr)
        what = site.name if site else f"at {addr:#x}"
        raise BatchRefused(f"refused: site {what}: {reason}. Nothing was written.") from None
    except OSError as exc:
        raise syscall_error(exc) from None
    return res


# ---- the record of each group's variant ---------------------------------------------------

def _reconcile(groups) -> None:
    """Make the record of each group agree with its sites' bytes, and its slots with the record:
    the C runtime's commit (rt.c), one call a group.

    The record is kept when the bytes hold it; otherwise the variant the bytes do hold becomes
    the record.  Bytes that hold no variant whole (a debugger's breakpoint in a site, a write
    that failed half-way) leave the record alone: the next batch refuses, naming the site."""
    for name in groups:
        g = registry.groups.get(name)
        if g is None:
            continue
        try:
            g.current = _core.rt_reconcile(name)
        except OSError as exc:  # an op slot in code that could not be written
            raise syscall_error(exc) from None


def _check_not_reentered(what: str) -> None:
    # _lock is an RLock, so a signal handler of the thread inside runtime_patch could enter
    # again and interleave two switches of one group; refuse instead.
    if _lock._is_owned():
        raise PvpatchError(f"{what} called while this thread is already inside runtime_patch "
                           f"or a registration (from a signal handler?); nothing was done")


# ---- lifecycle: modules that go away (docs/extensions.md, "Lifecycle") --------------------

_RTLD_LAZY, _RTLD_NOLOAD = 0x1, 0x4
_libdl = ctypes.CDLL(None)
_dlopen, _dlclose = _libdl.dlopen, _libdl.dlclose
_dlopen.restype, _dlopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_int]
_dlclose.restype, _dlclose.argtypes = ctypes.c_int, [ctypes.c_void_p]
_owner_seq = itertools.count(1)
_retire_gen_seen = 0
_collected: deque = deque()  # owners of module objects collected since the last look


def _loaded(path: str) -> int:
    """A reference to the loaded object `path` (its link map), or 0 when it is not loaded.
    ctypes releases the GIL around dlopen: a destructor that dlclose runs may need it."""
    if not path:
        return 0
    return _dlopen(os.fsencode(path), _RTLD_LAZY | _RTLD_NOLOAD) or 0


def _identity(handle: int) -> tuple[int, int]:
    # struct link_map starts with l_addr (the load bias) and, after l_name, l_ld (its dynamic
    # section): together they tell one loading of an object from another at another address.
    words = (ctypes.c_void_p * 3).from_address(handle)
    return words[0] or 0, words[2] or 0


def _forget(mod: Module) -> None:
    """Drop a module whose sites the C core has retired: no memory of it is read."""
    if mod in registry.modules:
        registry.modules.remove(mod)
    _core.rt_owner_drop(mod.owner)


def _drop_retired() -> None:
    """Forget modules retired in C (the C-level unregister, e.g. from a destructor)."""
    global _retire_gen_seen
    gen = _core.retire_gen()
    if gen == _retire_gen_seen:
        return
    gen, owners = _core.retired()
    gone = set(owners)
    for m in [m for m in registry.modules if m.owner in gone]:
        _forget(m)
    _retire_gen_seen = gen


class _modules_pinned:
    """Hold a reference on every registered object for the duration (with _lock held), so that
    no dlclose can unmap a module's code between the check and the batch: a dlclose meanwhile
    only drops its caller's reference, and the object goes when we drop ours (after the batch,
    outside the batch lock).  An object no longer loaded, or loaded anew elsewhere, is retired
    in C and forgotten, before anything reads or writes its memory.  Module objects collected
    meanwhile are unregistered here.  The references are taken and dropped by one C call each
    (_core.pin/unpin), whatever the number of modules; a process whose modules are all pvpatch's
    own core or generated code takes none."""
    __slots__ = ("handles",)

    def __enter__(self):
        _drop_retired()
        self.handles = b""
        pinnable = [m for m in registry.modules if m.identity is not None]
        if pinnable:
            self.handles, gone = _core.pin([m.path for m in pinnable],
                                           [m.identity for m in pinnable])
            for i in gone:
                _core.retire_owner(pinnable[i].owner)
                _forget(pinnable[i])
            _drop_retired()
        try:
            while _collected:
                owner = _collected.popleft()
                mod = next((m for m in registry.modules if m.owner == owner), None)
                if mod is not None:
                    try:
                        _unregister(mod)
                    except PvpatchError:
                        pass  # e.g. a debugger's int3 in a site: it stays registered, patched
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> bool:
        if self.handles:
            _core.unpin(self.handles)
            self.handles = b""
        return False


def _unregister(mod: Module) -> None:
    """Render every runtime site of `mod` to its default (`call *slot(%rip)`, the slot holding
    the group's current variant), then retire it in C and forget it.  _lock held, pinned."""
    pieces = []
    for g, t in mod.tables.items():
        cur = registry.groups[g].current
        if _core.sites_match(t.addrs, t.lens, t.by_variant[cur], mod.owner) == -2:
            _forget(mod)  # retired in C meanwhile: nothing to render
            return
        pieces.append((t.addrs, t.lens, t.by_variant[cur], t.by_variant["default"]))
    # Boot sites too: they were rendered once, at registration, and go back to their default
    # as well, so that the module can register again (registration expects defaults).
    boot = [s for s in mod.boot if s.group in mod.boot_variants]
    if boot:
        pieces.append((array("Q", [s.addr for s in boot]), bytes(s.length for s in boot),
                       b"".join(s.renderings[mod.boot_variants[s.group]].ljust(STRIDE, b"\0")
                                for s in boot),
                       b"".join(s.renderings["default"].ljust(STRIDE, b"\0") for s in boot)))
    _reconcile(set(mod.tables) | set(mod.boot_variants))  # what the default sites will call
    ev = PatchEvent(time.time(), {}, kind="unregister")
    res = _apply(pieces)
    _account(ev, res)
    _core.retire_owner(mod.owner)
    _forget(mod)
    events.append(ev)


def unregister_module(module) -> None:
    """Unregister a module: its runtime sites go back to their default, `call *slot(%rip)`
    (the slot holds the group's current variant, so code running there stays right), and are
    forgotten; no later runtime_patch touches the module's memory.  `module` is a Module, an
    extension module that registered with register_module, or a module name.  An unknown module
    is a RegistryError; a refused batch (a debugger's int3 in a site) raises BatchRefused and
    leaves the module registered."""
    _check_not_reentered("unregister_module")
    with _lock, _modules_pinned():
        if isinstance(module, Module):
            name = module.name
        elif isinstance(module, str):
            name = module
        else:
            cap = getattr(module, "__pvpatch__", None)
            if cap is None:
                raise RegistryError(f"unregister_module: {module!r} is not a registered module "
                                    f"(a Module, a module name, or an extension with "
                                    f"__pvpatch__)")
            name = read_module(capsule_address(cap)).name
        mod = registry.module(name)
        if mod.name == "pvpatch._core":
            raise RegistryError("unregister_module: pvpatch._core is pvpatch itself; it stays")
        _unregister(mod)


# ---- registration -------------------------------------------------------------------------

def register_desc(desc: ModuleDesc, *, text: tuple[int, int] | None = None,
                  path: str = "") -> Module:
    """Register a module from its descriptor: check every site, then patch every site (runtime
    and boot) from its default to the current variant in one batch, then drop the boot records.
    Any error names the site and patches nothing.  The module's text stays where and what it is
    (docs/protocol.md, the writer)."""
    _check_not_reentered("register_desc")
    with _lock, _modules_pinned():
        known = next((m for m in registry.modules if m.name == desc.name), None)
        if known is not None:
            # Registering the same descriptor again is a no-op that returns the Module; another
            # module under a registered name is an error (the name is how modules are named).
            if desc.addr and known.owner == desc.addr:
                return known
            raise RegistryError(f"module {desc.name!r} is already registered (descriptor at "
                                f"{known.owner:#x}); unregister it first")
        _reconcile([g.name for g in desc.groups])
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
        # Check and render before touching anything.  Registering the text as a code range
        # changes no byte (on the writer's fallback path it moves the text into a memfd).
        runtime, boot = registry.plan_sites(desc, text, _read)
        try:
            _core.register_text(text[0], text[1] - text[0], f"pvpatch-text:{desc.name}")
        except OSError as exc:
            raise syscall_error(exc) from None
        # A group new to the registry starts at its native variant; a known one at its current.
        start = {g.name: (registry.groups[g.name].current if g.name in registry.groups
                          else g.variants[g.native]) for g in desc.groups}
        owner = desc.addr or (1 << 63 | next(_owner_seq))  # generated code: a key of its own
        mod = Module(desc.name, desc, text, runtime, path=path, owner=owner)
        # A loaded object is pinned around every patching call and dropped when it is
        # unloaded; pvpatch's own core is never unloaded while pvpatch is imported.
        h = _loaded(path) if desc.name != "pvpatch._core" else 0
        if h:
            mod.identity = _identity(h)
            _dlclose(h)
        _core.add_known_sites(array("Q", [s.addr for s in runtime + boot]).tobytes(), owner,
                              text[0], text[1] - text[0])
        ev = PatchEvent(time.time(), {}, kind="register")
        t0 = time.perf_counter()
        todo = runtime + boot

        def flat(variant_of) -> bytes:
            return b"".join(s.renderings[variant_of(s)].ljust(STRIDE, b"\0") for s in todo)

        addrs, lens, default = (array("Q", [s.addr for s in todo]),
                                bytes(s.length for s in todo), flat(lambda s: "default"))
        # Boot records are dropped: those sites are never patched again.  What stays is a note
        # of what they became, for `pvpatch sites`.
        mod.boot = boot
        mod.boot_variants = {s.group: start[s.group] for s in boot}
        mod.boot_bytes_dropped = desc.section_bytes.get("boot", 0)
        # The module is recorded before its batch, so that no exception after the batch can
        # leave patched sites unrecorded (their variant is read from the bytes anyway); the
        # record is undone if the batch wrote nothing.
        known_ops = {name: list(g.ops) for name, g in registry.groups.items()}
        registry.adopt_groups(desc)
        registry.modules.append(mod)
        try:
            mod.build_tables()  # in the C runtime too, which needs the groups declared
            mod.add_slots()
            res = _apply([(addrs, lens, default, flat(lambda s: start[s.group]))])
        except BaseException:
            if _core.sites_match(addrs.tobytes(), lens, default) == -1:  # nothing written
                registry.modules.remove(mod)
                _core.rt_owner_drop(owner)
                _core.retire_owner(owner)  # its sites are not known any more either
                for name in [g.name for g in desc.groups]:
                    if name in known_ops:
                        registry.groups[name].ops = known_ops[name]
                    else:
                        registry.groups.pop(name, None)
            raise
        desc.boot = []
        _account(ev, res)
        ev.duration_s = time.perf_counter() - t0
        _reconcile([g.name for g in desc.groups])  # the record and the slots, from the bytes
        events.append(ev)
        return mod


def register_module(module) -> Module:
    """Register an extension module that exported its descriptor with pvpatch_export()."""
    cap = getattr(module, "__pvpatch__", None)
    if cap is None:
        raise PvpatchError(f"{getattr(module, '__name__', module)!r} exports no __pvpatch__ "
                           f"capsule (call pvpatch_export() in its init function)")
    mod = register_desc(read_module(capsule_address(cap)))
    try:  # its module object collected: unregistered at the next patching call
        weakref.finalize(module, _collected.append, mod.owner).atexit = False
    except TypeError:
        pass  # an object that takes no weak reference stays registered until unregistered
    return mod


# ---- runtime_patch ------------------------------------------------------------------------

def set_transition(group: str, fn: Callable | None) -> None:
    """Let `group` own its switches: runtime_patch then calls fn(current, target, apply), where
    apply(variant) moves the group to `variant` in one plain batch.  It is called whenever the
    group is named, also when current == target, so that it can finish a switch an exception
    interrupted (the lock group's mode word)."""
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
        # rt_switch's ns is the whole switch; its batch_ns, apply_batch's ns, the C batch alone
        ev.batch_ns.append(res["batch_ns"] if "batch_ns" in res else res["ns"])


def _plain(changes: dict[str, str], ev: PatchEvent, hook: int = 0) -> None:
    """Move groups to variants in one batch and commit: the C runtime's switch (rt.c), which
    reads the old bytes from the sites, applies one batch, and commits from the bytes it left
    (slots included), whatever happened.  A group with no runtime site left (its modules
    unregistered or unloaded) has no bytes to say what it is: the record moves, and a module
    joining later is rendered to it."""
    groups = list(changes)
    reg = registry.groups
    try:
        res = _core.rt_switch(groups, [changes[g] for g in groups], hook)
    except BaseException as exc:
        for g in groups:  # the record, as the C commit left it
            reg[g].current = _core.rt_current(g) or reg[g].current
        if isinstance(exc, ValueError):
            raise BatchRefused(exc.args[0] if exc.args else str(exc)) from None
        if isinstance(exc, OSError):
            raise syscall_error(exc) from None
        raise
    for g, was, now in zip(groups, res["from"], res["now"]):
        reg[g].current = now  # the commit, from the bytes
        if was != changes[g]:
            ev.changes.setdefault(g, (was, changes[g]))
    _account(ev, res)
    if res.get("late_sync_errno"):
        # Sync #3 failed after the sites were whole and new: committed (the bytes say so), and
        # said.
        e = res["late_sync_errno"]
        raise syscall_error(OSError(e, os.strerror(e), "membarrier"))


def _check_changes(changes) -> None:
    if not isinstance(changes, Mapping):
        hint = (f" (did you mean runtime_patch({{{changes!r}: <variant>}})?)"
                if isinstance(changes, str) else "")
        raise ArgumentError(f"runtime_patch takes a mapping {{group: variant}} of names, not "
                            f"{type(changes).__name__} {changes!r}{hint}")
    for g, v in changes.items():
        if not isinstance(g, str):
            raise ArgumentError(f"runtime_patch: group names are str, not "
                                f"{type(g).__name__} {g!r}")
        if not isinstance(v, str):
            raise ArgumentError(f"runtime_patch: group {g!r}: the variant is a str name, not "
                                f"{type(v).__name__} {v!r}")


def runtime_patch(changes: Mapping[str, str], **unexpected) -> PatchEvent:
    """Switch groups to variants while threads run their sites: {group: variant, ...}.

    Every affected site of every registered module is patched in one batch (groups that own
    their transitions, like `lock`, take the batches their protocol needs).  Concurrent callers
    are serialised.  A refused batch changes nothing and raises BatchRefused.  Every error is a
    PvpatchError (a failed system call a SyscallError carrying errno and the call's name)."""
    if unexpected:
        raise ArgumentError(f"runtime_patch takes one mapping {{group: variant}} and no keyword "
                            f"arguments, not {', '.join(sorted(unexpected))}")
    return _runtime_patch(changes)


def _runtime_patch(changes: Mapping[str, str], hook: int = 0) -> PatchEvent:
    """runtime_patch, plus the selftest's hook: the address of a `long (*)(void)` the C core
    calls right after step 1's writes (it makes the patcher trap on its own int3)."""
    _check_changes(changes)
    changes = dict(changes)
    _check_not_reentered("runtime_patch")
    try:
        with _lock, _modules_pinned():
            groups = registry.groups
            for g, v in changes.items():
                grp = groups.get(g)
                if grp is None or v not in grp.variants:
                    registry.group(g).check_variant(v)  # raises, naming what is unknown
            ev = PatchEvent(time.time(), {})
            t0 = time.perf_counter()
            # Plain groups: one C switch, which reads what each group holds from its bytes and
            # commits from them (no batch for a group already there; its slots are repaired).
            plain = {g: v for g, v in changes.items() if g not in _transitions}
            if plain:
                _plain(plain, ev, hook)
            for g, v in changes.items():
                if g not in _transitions:
                    continue
                _reconcile([g])
                cur = groups[g].current
                if cur != v:
                    ev.changes[g] = (cur, v)
                _transitions[g](cur, v, lambda variant, g=g: _plain({g: variant}, ev))
            ev.duration_s = time.perf_counter() - t0
            events.append(ev)
            return ev
    except PvpatchError:
        raise
    except OSError as exc:  # a failed call below us: pvpatch's error, errno and call kept
        raise syscall_error(exc) from None


def current() -> dict[str, str]:
    """{group: current variant} for every registered group, as the sites' bytes hold it.

    Waits for a runtime_patch in progress in another thread, 2 s at most: past that (a stuck
    switch, seen from a watchdog) it returns the record as it stands."""
    if not _lock.acquire(timeout=2.0):
        return {g.name: g.current for g in registry.groups.values()}
    try:
        with _modules_pinned():
            _reconcile(list(registry.groups))
            return {g.name: g.current for g in registry.groups.values()}
    finally:
        _lock.release()


def _after_fork_in_child() -> None:
    # The thread that held _lock at the fork does not exist in the child: a fresh lock (the
    # record it may have left stale is re-derived from the bytes at the next use).  The C
    # core's own locks are handled by its pthread_atfork handlers.
    global _lock
    _lock = threading.RLock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def site_bytes(site: Site) -> bytes:
    return _read(site.addr, site.length)


# ---- re-rendering (CPU feature gates) -------------------------------------------------------

def rerender(effective: int) -> PatchEvent:
    """Re-render every runtime site whose rendering depends on the CPU features (templates
    gated with PVPATCH_IMPL_NEEDS_*) for the feature set `effective`, in one batch of the
    ordinary protocol.  No group changes variant.  The commit reads the bytes back, as
    runtime_patch's does: a site takes its new renderings (of every variant) only if it holds
    the new rendering of its current variant, and `registry.effective` changes only if every
    site does.  A refused batch writes nothing, so it changes nothing."""
    with _lock:
        ev = PatchEvent(time.time(), {}, kind="features")
        t0 = time.perf_counter()
        _reconcile(list(registry.groups))
        plan = registry.plan_rerender(effective)
        cur = {s.addr: registry.groups[s.group].current for _, s, _ in plan}
        todo = [(s, ch[cur[s.addr]][1]) for _, s, ch in plan if cur[s.addr] in ch]
        res = None
        try:
            res = _apply([(array("Q", [s.addr for s, _ in todo]),
                           bytes(s.length for s, _ in todo),
                           b"".join(s.renderings[cur[s.addr]].ljust(STRIDE, b"\0")
                                    for s, _ in todo),
                           b"".join(code.ljust(STRIDE, b"\0") for _, code in todo))])
            _account(ev, res)
        finally:
            # The commit, from the bytes.
            landed = {s.addr for s, code in todo if _read(s.addr, s.length) == code}
            touched = {}
            for m, s, changed in plan:
                if cur[s.addr] in changed and s.addr not in landed:
                    continue
                for v, (kind, code) in changed.items():
                    s.kinds[v], s.renderings[v] = kind, code
                touched[id(m)] = m
            for m in touched.values():
                m.build_tables()
            if len(landed) == len(todo):
                registry.effective = effective
        ev.duration_s = time.perf_counter() - t0
        events.append(ev)
        if res.get("late_sync_errno"):
            e = res["late_sync_errno"]
            raise syscall_error(OSError(e, os.strerror(e), "membarrier"))
        return ev
