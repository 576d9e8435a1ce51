"""The hint page ABI, version 1: the one place that knows its bytes.

The page is a file in shared memory (DEFAULT_PATH, on tmpfs) of FILE_SIZE bytes, written only by the
publisher (`pvpatch hostd`) and mapped read-only by guests.  docs/hints.md has the byte-layout
table and the publication protocol; this module is their executable form: the layout (one struct
format), the constants, encode/decode, and validation that turns any bad page into a HintPageError
naming the field at fault.

Conventions:
  * little-endian, naturally aligned; the futex word (generation) is 4-byte aligned;
  * times are CLOCK_MONOTONIC nanoseconds (time.monotonic_ns()): immune to wall-clock steps and
    comparable between processes of one boot, which is all a heartbeat needs.  (Processes in
    different time namespaces see different monotonic clocks; there the page looks stale or from
    the future and guests fall back to the safe default.)
  * measurements are integers; percentages are in hundredths of a percent (0..10000); UNKNOWN
    (0xFFFFFFFF) means "not measured" (source missing, or no delta yet).
  * compatibility: `version` changes only for an incompatible change.  A compatible addition
    appends fields and grows `size`; a version-1 reader accepts size >= SIZE_V1 and ignores the
    tail, and ignores hint and feature bits it does not know.
"""
from __future__ import annotations

import dataclasses
import struct
import time

from ..errors import PvpatchError

# A tmpfs directory only root can write (trust.py: who may write the page, and why that matters).
DEFAULT_DIR = "/run/pvpatch"
DEFAULT_PATH = DEFAULT_DIR + "/hints"

MAGIC = int.from_bytes(b"PVHT", "little")  # the file starts with the bytes "PVHT"
VERSION = 1
FILE_SIZE = 4096  # one page: the mapping unit; room for compatible growth

# State of the publisher.
STATE_RUNNING = 1
STATE_STOPPED = 2  # hostd exited cleanly: no hints, readers fall back at once
STATES = {STATE_RUNNING: "running", STATE_STOPPED: "stopped"}

# Feature bits: what this page offers.
FEATURE_DYNAMIC_HINTS = 1 << 0  # hints change at run time; watch `generation` (futex)
FEATURE_HEARTBEAT = 1 << 1      # heartbeat_ns refreshed every interval_ns; staleness is defined
FEATURE_MEASUREMENTS = 1 << 2   # the measurement block is filled
FEATURE_SIMULATED = 1 << 3      # hints come from a --simulate timeline, not from measurements
FEATURES = {
    FEATURE_DYNAMIC_HINTS: "dynamic_hints",
    FEATURE_HEARTBEAT: "heartbeat",
    FEATURE_MEASUREMENTS: "measurements",
    FEATURE_SIMULATED: "simulated",
}

# Hint bits (the analogue of KVM's CPUID hints).
HINT_REALTIME = 1 << 0  # threads here are not preempted: pure spinning is fine (KVM_HINTS_REALTIME)
HINTS = {HINT_REALTIME: "realtime"}

# Sources that contributed measurements to this sample.
SOURCE_PROC_STAT = 1 << 0
SOURCE_PSI = 1 << 1
SOURCE_CGROUP_V1 = 1 << 2
SOURCE_CGROUP_V2 = 1 << 3
SOURCE_CPUID = 1 << 4
SOURCES = {
    SOURCE_PROC_STAT: "proc_stat",
    SOURCE_PSI: "psi",
    SOURCE_CGROUP_V1: "cgroup_v1",
    SOURCE_CGROUP_V2: "cgroup_v2",
    SOURCE_CPUID: "cpuid",
}

# Why the active hints are what they are.
REASON_NONE = 0            # no decision yet
REASON_UNDERSUBSCRIBED = 1  # every measure below its threshold: REALTIME
REASON_RUNNABLE = 2        # more runnable tasks than CPUs
REASON_STEAL = 3           # the hypervisor steals time
REASON_PSI = 4             # tasks wait for a CPU (PSI)
REASON_THROTTLED = 5       # the cgroup quota throttles
REASON_SIMULATED = 6       # --simulate
REASON_STOPPED = 7         # the publisher stopped
REASONS = {
    REASON_NONE: "none",
    REASON_UNDERSUBSCRIBED: "undersubscribed",
    REASON_RUNNABLE: "runnable",
    REASON_STEAL: "steal",
    REASON_PSI: "psi",
    REASON_THROTTLED: "throttled",
    REASON_SIMULATED: "simulated",
    REASON_STOPPED: "stopped",
}

UNKNOWN = 0xFFFFFFFF
PERCENT_SCALE = 100  # hundredths of a percent

# The layout.  Field names follow docs/hints.md; offsets are asserted below so that an edit here
# that moves a field is caught at import, not by a guest reading garbage.
LAYOUT = (
    # name              format  offset
    ("magic",            "I",   0),
    ("version",          "H",   4),
    ("state",            "H",   6),
    ("size",             "I",   8),
    ("seqcount",         "I",   12),
    ("generation",       "I",   16),   # the futex word
    ("publisher_pid",    "I",   20),
    ("features",         "Q",   24),
    ("active_hints",     "Q",   32),
    ("ever_hints",       "Q",   40),
    ("heartbeat_ns",     "Q",   48),
    ("changed_ns",       "Q",   56),
    ("interval_ns",      "Q",   64),
    ("publications",     "Q",   72),
    ("started_ns",       "Q",   80),
    ("sources",          "I",   88),
    ("reason",           "I",   92),
    ("online_cpus",      "I",   96),
    ("runnable",         "I",   100),
    ("steal",            "I",   104),
    ("psi_some_avg10",   "I",   108),
    ("cg_quota_mcpu",    "I",   112),
    ("cg_throttled",     "I",   116),
    ("hv_max_leaf",      "I",   120),
    ("hv_features",      "I",   124),
    ("hv_hints",         "I",   128),
    ("hv_signature",     "12s", 132),
)
STRUCT = struct.Struct("<" + "".join(f for _, f, _ in LAYOUT))
SIZE_V1 = STRUCT.size
OFFSETS = {name: off for name, _, off in LAYOUT}
OFF_SEQCOUNT = OFFSETS["seqcount"]
OFF_GENERATION = OFFSETS["generation"]

_off = 0
for _name, _fmt, _want in LAYOUT:
    assert _off == _want, f"hint page layout: {_name} at {_off}, documented at {_want}"
    _off += struct.calcsize("<" + _fmt)
assert _off == SIZE_V1 == 144 and OFF_GENERATION % 4 == 0
del _off, _name, _fmt, _want

MIN_INTERVAL_NS = 1_000_000          # 1 ms
MAX_INTERVAL_NS = 3600 * 1_000_000_000
FUTURE_SLACK_NS = 1_000_000_000      # a heartbeat this far in the future is forged, not early
STALE_MIN_NS = 1_000_000_000         # staleness bound: max(3 x interval, 1 s)
STALE_INTERVALS = 3


class HintPageError(PvpatchError, ValueError):
    """A hint page is not a valid version-1 page; ``field`` names what is wrong."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"hint page: {field}: {problem}")
        self.field = field
        self.problem = problem


@dataclasses.dataclass
class HintPage:
    """One decoded page.  Field meanings: docs/hints.md."""
    magic: int = MAGIC
    version: int = VERSION
    state: int = STATE_RUNNING
    size: int = SIZE_V1
    seqcount: int = 0
    generation: int = 0
    publisher_pid: int = 0
    features: int = 0
    active_hints: int = 0
    ever_hints: int = 0
    heartbeat_ns: int = 0
    changed_ns: int = 0
    interval_ns: int = 1_000_000_000
    publications: int = 0
    started_ns: int = 0
    sources: int = 0
    reason: int = REASON_NONE
    online_cpus: int = UNKNOWN
    runnable: int = UNKNOWN
    steal: int = UNKNOWN
    psi_some_avg10: int = UNKNOWN
    cg_quota_mcpu: int = UNKNOWN
    cg_throttled: int = UNKNOWN
    hv_max_leaf: int = 0
    hv_features: int = 0
    hv_hints: int = 0
    hv_signature: bytes = b""

    def stale_bound_ns(self) -> int:
        return max(STALE_INTERVALS * self.interval_ns, STALE_MIN_NS)

    def age_ns(self, now_ns: int | None = None) -> int:
        return (time.monotonic_ns() if now_ns is None else now_ns) - self.heartbeat_ns

    def is_stale(self, now_ns: int | None = None) -> bool:
        """No heartbeat within the bound, or the publisher stopped."""
        return self.state != STATE_RUNNING or self.age_ns(now_ns) > self.stale_bound_ns()

    def measurements(self) -> dict:
        """The measurement block in units people read (None = not measured)."""
        def pct(v):
            return None if v == UNKNOWN else v / PERCENT_SCALE

        def num(v):
            return None if v == UNKNOWN else v

        sig = self.hv_signature.rstrip(b"\0").decode("ascii", "replace")
        return {
            "sources": names(self.sources, SOURCES),
            "reason": REASONS.get(self.reason, f"unknown({self.reason})"),
            "online_cpus": num(self.online_cpus),
            "runnable": num(self.runnable),
            "steal_pct": pct(self.steal),
            "psi_some_avg10_pct": pct(self.psi_some_avg10),
            "cgroup_quota_cpus": (None if self.cg_quota_mcpu == UNKNOWN
                                  else 0.0 if self.cg_quota_mcpu == 0
                                  else self.cg_quota_mcpu / 1000),
            "cgroup_throttled_pct": pct(self.cg_throttled),
            "hypervisor": {
                "signature": sig or None,
                "max_leaf": self.hv_max_leaf,
                "features": self.hv_features,
                "hints": self.hv_hints,
                "realtime": bool(sig == "KVMKVMKVM" and self.hv_hints & 1),
            },
        }


def names(bits: int, table: dict[int, str]) -> list[str]:
    """Names of the set bits that `table` knows, in bit order."""
    return [name for bit, name in sorted(table.items()) if bits & bit]


def encode(page: HintPage) -> bytes:
    """The SIZE_V1 bytes of `page` (no validation: the publisher builds pages from typed values)."""
    values = []
    for name, _, _ in LAYOUT:
        v = getattr(page, name)
        if name == "hv_signature":
            v = bytes(v)[:12]
        values.append(v)
    return STRUCT.pack(*values)


def decode(buf: bytes) -> HintPage:
    """Parse the first SIZE_V1 bytes; raises HintPageError if there are fewer.  No validation."""
    if len(buf) < SIZE_V1:
        raise HintPageError("size", f"{len(buf)} bytes, a version-1 page has at least {SIZE_V1}")
    return HintPage(*STRUCT.unpack_from(buf, 0))


def validate(page: HintPage, *, file_size: int | None = None, now_ns: int | None = None) -> None:
    """Raise HintPageError naming the first field that a version-1 page cannot hold.

    The rules are docs/hints.md's ("A reader accepts a page only if"); their one implementation
    is the C agent's (`_core/agent.c`, pvagent_page_validate), which guests without Python run
    too.  Staleness is not checked here (a stale page is valid, just old): see
    HintPage.is_stale."""
    from .. import _core
    try:
        buf = encode(page)
    except struct.error as e:  # a value no page can hold (negative, too wide)
        raise HintPageError("page", f"a field does not fit its slot ({e})") from None
    now = time.monotonic_ns() if now_ns is None else now_ns
    bad = _core.hint_validate(buf, -1 if file_size is None else file_size, now)
    if bad is not None:
        raise HintPageError(*bad)
