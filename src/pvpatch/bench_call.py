"""`pvpatch bench call`: what a site costs against the code it stands for.

Loops in src/pvpatch/_core/bench_call.c, each N iterations of one thing: a direct call to a
trivial function, the same call through a pointer, a site rendered as a call to it; the
instruction `lea (%rdi,%rsi),%rax` inlined by the compiler, and a site rendered as that
instruction; `nop`, and a site rendered as a NOP; and eight NOPs in a row against eight NOP sites
in a row: 6-byte sites with and without the NOPs that align each site's rel32 field, and 8-byte
sites (a multiple of 4: aligned with no NOPs between them).  The loops run interleaved, `repeat` rounds;
per loop the fastest round gives ns per iteration (the loop's own increment and branch
included, the same in both loops of a pair).  Ratios are of loops measured in the same run.
Targets (docs/extensions.md): site call <= 1.02x direct, site inline <= 1.2x compiler inline,
site NOP <= 1.2x nop.
"""
from __future__ import annotations

import os
import statistics

from .bench import FORMATTERS, suite

PAIRS = (("indirect", "direct"), ("site_call", "direct"), ("site_inline", "compiler_inline"),
         ("site_nop", "nop"), ("site_nop8", "nop8"), ("site_nop8_unaligned", "nop8"),
         ("site8_nop8", "nop8"))
# The targets; the runs of eight NOP sites have none (they show what the NOPs that
# align the rel32 field, and NOP length itself, cost in straight-line code).
TARGETS = {"site_call": 1.02, "site_inline": 1.2, "site_nop": 1.2}


@suite("call")
def bench_call(iterations: int = 1_000_000, repeat: int = 41, progress=None) -> dict:
    import pvpatch
    from . import _core

    if pvpatch.current().get("bench_call") != "native":
        raise pvpatch.PvpatchError("the bench_call group is not registered as native")
    names = _core.bench_call_loops()
    ns = {n: [] for n in names}
    for k in range(len(names)):  # warm up caches and predictors once
        _core.bench_call_run(k, iterations // 10)
    for _ in range(repeat):
        for k, n in enumerate(names):
            ns[n].append(_core.bench_call_run(k, iterations) / iterations)
    rows = [{"loop": n, "ns_min": min(ns[n]), "ns_median": statistics.median(ns[n])}
            for n in names]
    best = {r["loop"]: r["ns_min"] for r in rows}
    ratios = [{"loop": a, "baseline": b, "ratio": best[a] / best[b],
               "target": TARGETS.get(a)} for a, b in PAIRS]
    kinds = {s.op: s.kinds["native"] for s in pvpatch.registry.sites("bench_call")}
    aligned = [(s.addr + s.length) % 4 == 0 for s in pvpatch.registry.sites("bench_call")]
    return {"suite": "call", "iterations": iterations, "repeat": repeat,
            "cpus": os.cpu_count(), "loadavg": os.getloadavg(), "renderings": kinds,
            "sites": len(aligned), "sites_rel32_aligned": sum(aligned),
            "rows": rows, "ratios": ratios}


def format_call(res: dict) -> str:
    out = [f"{'loop':<20} {'ns/iter min':>11} {'median':>8}"]
    for r in res["rows"]:
        out.append(f"{r['loop']:<20} {r['ns_min']:>11.3f} {r['ns_median']:>8.3f}")
    out.append("")
    out.append(f"{'ratio':<34} {'x':>6} {'target':>7}")
    for r in res["ratios"]:
        t = f"<= {r['target']}" if r["target"] else ""
        out.append(f"{r['loop'] + ' / ' + r['baseline']:<34} {r['ratio']:>6.3f} {t:>7}")
    load = ", ".join(f"{x:.2f}" for x in res["loadavg"])
    out.append(f"({res['iterations']} iterations x {res['repeat']} rounds; {res['cpus']} CPUs, "
               f"load {load})")
    return "\n".join(out)


FORMATTERS["call"] = format_call
