"""`pvpatch bench call` runs every loop against real renderings and reports ratios (no speed
is asserted: the machine is shared)."""
import json
import subprocess
import sys

import pvpatch
from pvpatch import bench, bench_call  # noqa: F401


def test_bench_call_measures_each_rendering_kind():
    res = bench.SUITES["call"](iterations=20000, repeat=3)
    assert res["renderings"] == {"call": "call", "inl": "inline", "nop": "nop"}
    loops = {r["loop"] for r in res["rows"]}
    assert loops == {"direct", "indirect", "site_call", "compiler_inline", "site_inline", "nop",
                     "site_nop", "nop8", "site_nop8", "site_nop8_unaligned", "site8_nop8"}
    # 8 sites of the unaligned loop opt out of the alignment (some end aligned by chance)
    assert res["sites"] == 27 and res["sites_rel32_aligned"] >= 19
    assert all(r["ns_min"] > 0 for r in res["rows"])
    assert {(r["loop"], r["baseline"]) for r in res["ratios"]} == set(bench_call.PAIRS)
    assert res["cpus"] >= 1 and len(res["loadavg"]) == 3


def test_bench_call_cli_json():
    out = subprocess.run([sys.executable, "-m", "pvpatch.cli", "bench", "call", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)["call"]
    assert res["suite"] == "call" and len(res["ratios"]) == 7


def test_header_sites_are_one_instruction_with_rel32_aligned():
    """Every site the header emitted (the core's) holds one instruction, and its last 4 bytes
    (the rel32 field of every call rendering) are 4-byte aligned."""
    from pvpatch.descriptor import F_UNALIGNED
    from pvpatch.disasm import decode
    sites = pvpatch.registry.module("pvpatch._core").sites
    assert {s.group for s in sites} >= {"selftest", "lock", "bench_call"}
    for s in sites:
        code = pvpatch.patcher.site_bytes(s)
        assert len(decode(code, s.addr)) == 1, s.name
        assert (s.addr + s.length) % 4 == 0 or s.record.flags & F_UNALIGNED, s.name
