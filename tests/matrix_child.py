"""Run in a fresh process by test_header_matrix.py: load one build of the `mx` extension, run
every site before and after registration and under every variant, print the findings as JSON.
A crash (bad unwind info, a clobbered register used as a pointer) is then the test's failure,
not the end of the test run."""
import importlib.util
import json
import os
import sys

import pvpatch
from pvpatch import descriptor


def maps():
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.append((lo, hi, parts[5].strip() if len(parts) > 5 else ""))
    return out


def where(addr, m):
    for lo, hi, path in m:
        if lo <= addr < hi:
            return path
    return "?"


def backtraces(mod, bt_ends):
    out = {}
    for how, name in ((0, "backtrace"), (1, "libunwind")):
        if how == 1 and not mod.has_libunwind():
            continue
        frames = mod.bt(how)
        if isinstance(frames, int):
            out[name] = {"error": frames}
            continue
        m = maps()
        out[name] = {"frames": frames, "objects": [where(a, m) for a in frames],
                     "site_ends": bt_ends}
    return out


def snapshot(mod, bt_ends):
    return {"results": mod.results(), "bt": backtraces(mod, bt_ends), "cancel": mod.cancel()}


def main():
    path, name = sys.argv[1], sys.argv[2]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    desc = descriptor.read_module(descriptor.capsule_address(mod.__pvpatch__))
    bt_op = [o.name for o in desc.groups[0].ops].index("bt")
    bt_ends = [r.addr + r.length for r in desc.runtime if r.op == bt_op]
    report = {"default": snapshot(mod, bt_ends)}
    pvpatch.register_module(mod)
    m = pvpatch.registry.module(desc.name)
    report["kinds"] = {s.op: sorted(set(s.kinds.values()) - {"default"}) for s in m.sites}
    for v in ("native", "pv", "alt"):
        pvpatch.runtime_patch({"mx": v})
        report[v] = snapshot(mod, bt_ends)
    pvpatch.runtime_patch({"mx": "native"})
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
