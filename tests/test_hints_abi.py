"""The hint page ABI: layout, round trip, validation naming the field at fault."""
from __future__ import annotations

import os
import re
import time

import pytest

from pvpatch.hints import abi

DOC = os.path.join(os.path.dirname(__file__), "..", "docs", "hints.md")


def good_page(**kw) -> abi.HintPage:
    now = time.monotonic_ns()
    p = abi.HintPage(publisher_pid=1234, features=abi.FEATURE_DYNAMIC_HINTS,
                     active_hints=abi.HINT_REALTIME, ever_hints=abi.HINT_REALTIME,
                     heartbeat_ns=now, changed_ns=now - 10, started_ns=now - 100,
                     interval_ns=1_000_000_000, online_cpus=2, runnable=1, steal=250,
                     psi_some_avg10=10000, cg_quota_mcpu=1500, cg_throttled=0,
                     hv_signature=b"KVMKVMKVM\0\0\0", hv_hints=1, generation=7, seqcount=4)
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def test_layout_is_packed_aligned_and_versioned():
    assert abi.SIZE_V1 == 144 <= abi.FILE_SIZE
    assert abi.OFF_GENERATION % 4 == 0 and abi.OFF_SEQCOUNT % 4 == 0
    assert abi.encode(good_page())[:4] == b"PVHT"
    for name, fmt, off in abi.LAYOUT:
        if fmt == "Q":
            assert off % 8 == 0, name


def test_round_trip():
    p = good_page()
    q = abi.decode(abi.encode(p))
    assert q == p
    abi.validate(q, file_size=abi.FILE_SIZE)
    m = q.measurements()
    assert m["steal_pct"] == 2.5 and m["psi_some_avg10_pct"] == 100.0
    assert m["cgroup_quota_cpus"] == 1.5
    assert m["hypervisor"]["signature"] == "KVMKVMKVM" and m["hypervisor"]["realtime"]


def test_unknown_measurements_read_as_none():
    m = abi.HintPage().measurements()
    assert m["steal_pct"] is None and m["runnable"] is None and m["cgroup_quota_cpus"] is None


@pytest.mark.parametrize("field,value,fragment", [
    ("magic", 0xDEADBEEF, "magic"),
    ("version", 2, "version"),
    ("size", 100, "size"),
    ("size", abi.FILE_SIZE + 1, "size"),
    ("seqcount", 5, "seqcount"),
    ("state", 9, "state"),
    ("publisher_pid", 0, "publisher_pid"),
    ("ever_hints", 0, "active_hints"),
    ("interval_ns", 10, "interval_ns"),
    ("heartbeat_ns", time.monotonic_ns() + 3600 * 10**9, "heartbeat_ns"),
    ("reason", 99, "reason"),
    ("online_cpus", 0, "online_cpus"),
    ("steal", 10001, "steal"),
    ("psi_some_avg10", 20000, "psi_some_avg10"),
    ("cg_throttled", 12345, "cg_throttled"),
])
def test_validation_names_the_field(field, value, fragment):
    p = good_page(**{field: value})
    with pytest.raises(abi.HintPageError) as ei:
        abi.validate(p, file_size=abi.FILE_SIZE)
    assert ei.value.field == fragment
    assert fragment in str(ei.value)


def test_stopped_page_cannot_carry_hints():
    with pytest.raises(abi.HintPageError, match="stopped"):
        abi.validate(good_page(state=abi.STATE_STOPPED))
    abi.validate(good_page(state=abi.STATE_STOPPED, active_hints=0))


def test_decode_short_buffer():
    with pytest.raises(abi.HintPageError, match="size"):
        abi.decode(b"PVHT" + b"\0" * 20)


def test_unknown_hint_bits_are_ignored_not_fatal():
    # Compatible growth: a newer publisher may add hints; an old reader ignores them.
    p = good_page(active_hints=abi.HINT_REALTIME | 1 << 40, ever_hints=abi.HINT_REALTIME | 1 << 40)
    abi.validate(p)
    assert abi.names(p.active_hints, abi.HINTS) == ["realtime"]


def test_staleness_bound():
    p = good_page(interval_ns=100_000_000)  # 0.1 s -> bound is the 1 s minimum
    assert p.stale_bound_ns() == 10**9
    assert not p.is_stale(p.heartbeat_ns + 10**9)
    assert p.is_stale(p.heartbeat_ns + 10**9 + 1)
    p = good_page(interval_ns=2 * 10**9)
    assert p.stale_bound_ns() == 6 * 10**9
    assert good_page(state=abi.STATE_STOPPED, active_hints=0).is_stale(0)


def test_docs_table_matches_layout():
    """docs/hints.md's byte-layout table is the ABI: it must not drift from abi.LAYOUT."""
    with open(DOC) as f:
        text = f.read()
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*`(\w+)`", text, re.M)
    doc = [(name, int(off), int(size)) for off, size, name in rows]
    import struct
    code = [(name, off, struct.calcsize("<" + fmt)) for name, fmt, off in abi.LAYOUT]
    assert doc == code
