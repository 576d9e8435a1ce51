"""Generated code with patchable sites: any number of sites, for benchmarks and for tests that
need sites of a chosen shape (including broken ones).

The code lives in a code range of the writer (_core.map_code: r-x, near the C core, so that
rel32 calls reach the selftest implementations), written with _core.write_code; the op slots sit
in its first page.  Each site is the body of a small function:

    sub  $8, %rsp          ; the ABI's 16-byte alignment at the call
    <site>                 ; default: NOPs, call *slot(%rip)
    add  $8, %rsp
    ret
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass

from . import _core, x86
from .descriptor import GroupDesc, ModuleDesc, OpDesc, SiteRecord
from .errors import syscall_error

PAGE = 4096
PROLOGUE = bytes.fromhex("4883ec08")   # sub $8,%rsp
EPILOGUE = bytes.fromhex("4883c408c3")  # add $8,%rsp; ret
_counter = 0


@dataclass
class Generated:
    desc: ModuleDesc
    text: tuple[int, int]
    functions: list[int]   # address of the function around site i

    def call(self, i: int, a: int = 0, b: int = 0) -> int:
        fn = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_long, ctypes.c_long)(self.functions[i])
        return fn(a, b)


def _selftest_value_group(name: str) -> GroupDesc:
    """A group `name` whose one op, `value`, has the selftest `value` implementations."""
    from .patcher import registry  # the core is registered by then
    core = next(m for m in registry.modules if m.name == "pvpatch._core")
    st = next(g for g in core.desc.groups if g.name == "selftest")
    op = next(o for o in st.ops if o.name == "value")
    return GroupDesc(name, list(st.variants), st.native, [OpDesc("value", 0, list(op.impls))])


def generate(n_sites: int, *, length: int = 6, group: str = "bench",
             name: str | None = None) -> Generated:
    """Make `n_sites` functions, each with one `group.value` site of `length` bytes, written in
    the default rendering and not yet registered (pass .desc and .text to
    pvpatch.register_desc)."""
    global _counter
    _counter += 1
    name = name or f"generated-{group}-{_counter}"
    g = _selftest_value_group(group)
    fn_size = len(PROLOGUE) + length + len(EPILOGUE)
    fn_size = (fn_size + 15) & ~15
    code_size = PAGE + n_sites * fn_size
    size = (code_size + PAGE - 1) & ~(PAGE - 1)
    near = _core.text_segment(g.ops[0].impls[0].fn)[0]
    try:
        exec_base = _core.map_code(size, f"pvpatch-gen:{name}", near)
    except OSError as exc:
        raise syscall_error(exc) from None
    slot = exec_base  # first page: slots
    g.ops[0].slot, g.ops[0].slot_in_code = slot, True
    buf = bytearray(size - PAGE)
    records, functions = [], []
    for i in range(n_sites):
        f = exec_base + PAGE + i * fn_size
        site = f + len(PROLOGUE)
        code = PROLOGUE + x86.default_site(site, slot, length) + EPILOGUE
        off = f - exec_base - PAGE
        buf[off:off + fn_size] = code.ljust(fn_size, b"\xcc")  # int3 between functions
        records.append(SiteRecord("runtime", i, 0, site, length, 0, 0, 0))
        functions.append(f)
    try:
        _core.write_code(slot, g.ops[0].impls[g.native].fn.to_bytes(8, "little"))
        _core.write_code(exec_base + PAGE, bytes(buf))
    except OSError as exc:
        raise syscall_error(exc) from None
    desc = ModuleDesc(name, 0, [g], records, [], {"runtime": 8 * n_sites, "boot": 0})
    return Generated(desc, (exec_base, exec_base + size), functions)
