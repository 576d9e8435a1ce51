"""Where the publisher's measurements come from.

Every source is optional.  Each says whether it is available and, when it is not, why (a missing
file, a controller not enabled, no hypervisor...).  A source that fails mid-run becomes unavailable
with the reason; the others go on.  sample() returns page fields (abi.HintPage names, abi units);
fields a source cannot measure are left out, and the page carries abi.UNKNOWN for them.

  ProcStat   /proc/stat: runnable tasks (procs_running, less the publisher) vs online CPUs, and
             the share of CPU time stolen by the hypervisor over the last interval.
  Psi        /proc/pressure/cpu: "some avg10", the share of the last 10 s in which a runnable task
             waited for a CPU.
  Cgroup     the publisher's cgroup, v2 (cpu.max, cpu.stat) or v1 (cpu.cfs_quota_us,
             cpu.cfs_period_us, cpu.stat): the effective CPU quota (the tightest of the cgroup and
             its ancestors) and the share of periods throttled over the last interval.
  Cpuid      CPUID leaves 0x40000000/0x40000001: hypervisor signature, its features (EAX) and
             hints (EDX; for KVM bit 0 is KVM_HINTS_REALTIME).  Through pvpatch._core.cpuid, or
             /dev/cpu/0/cpuid when the core lacks it.
"""
from __future__ import annotations

import os
import struct

from . import abi

PROC = "/proc"
SYS = "/sys"

HV_LEAF = 0x40000000
KVM_SIGNATURE = b"KVMKVMKVM\0\0\0"
KVM_HINTS_REALTIME = 1 << 0


class SourceUnavailable(Exception):
    """Raised by a source's probe or sample; the message is the reason shown to the user."""


class Source:
    name = "?"
    bit = 0

    def __init__(self):
        self.available = False
        self.reason = "not probed"
        try:
            self.probe()
            self.available, self.reason = True, ""
        except SourceUnavailable as e:
            self.reason = str(e)
        except OSError as e:
            self.reason = f"{e.filename or '?'}: {e.strerror}"

    def probe(self) -> None:
        """Raise SourceUnavailable (or OSError) if the source cannot be used here."""

    def sample(self) -> dict:
        raise NotImplementedError

    def take(self) -> dict:
        """sample(), or {} once the source has failed (the reason is kept)."""
        if not self.available:
            return {}
        try:
            return self.sample()
        except SourceUnavailable as e:
            self.available, self.reason = False, str(e)
        except (OSError, ValueError, IndexError) as e:
            self.available, self.reason = False, f"sample failed: {e}"
        return {}

    def describe(self) -> str:
        return f"{self.name}: " + ("available" if self.available else f"unavailable ({self.reason})")


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _pct(part: float, whole: float) -> int:
    """Hundredths of a percent, clamped to 0..100%."""
    if whole <= 0:
        return 0
    return max(0, min(100 * abi.PERCENT_SCALE, round(part * 100 * abi.PERCENT_SCALE / whole)))


class ProcStat(Source):
    name = "proc_stat"
    bit = abi.SOURCE_PROC_STAT

    def __init__(self, root: str = PROC):
        self.path = os.path.join(root, "stat")
        self._last: tuple[int, int] | None = None  # (steal, total) jiffies at the last sample
        super().__init__()

    def _parse(self) -> tuple[int, int, int, int]:
        """(online cpus, procs_running, steal jiffies, total jiffies)."""
        cpus = running = None
        steal = total = None
        for line in _read(self.path).splitlines():
            if line.startswith("cpu "):
                f = [int(x) for x in line.split()[1:]]
                if len(f) < 8:
                    raise SourceUnavailable(f"{self.path}: cpu line has {len(f)} fields, "
                                            "no steal column")
                # user nice system idle iowait irq softirq steal [guest guest_nice]: guest time
                # is already counted in user, so the total is the first eight.
                steal, total = f[7], sum(f[:8])
                cpus = 0
            elif line.startswith("cpu") and cpus is not None:
                cpus += 1  # one line per online CPU
            elif line.startswith("procs_running "):
                running = int(line.split()[1])
        if cpus is None or running is None:
            raise SourceUnavailable(f"{self.path}: no cpu or procs_running line")
        return cpus, running, steal, total

    def probe(self) -> None:
        self._parse()

    def sample(self) -> dict:
        cpus, running, steal, total = self._parse()
        out = {"online_cpus": cpus,
               # procs_running counts the publisher itself: it is running while it reads
               "runnable": max(0, running - 1)}
        if self._last is not None:
            out["steal"] = _pct(steal - self._last[0], total - self._last[1])
        self._last = (steal, total)
        return out


class Psi(Source):
    name = "psi"
    bit = abi.SOURCE_PSI

    def __init__(self, root: str = PROC):
        self.path = os.path.join(root, "pressure", "cpu")
        super().__init__()

    def _avg10(self) -> float:
        try:
            text = _read(self.path)
        except FileNotFoundError:
            raise SourceUnavailable(f"{self.path} missing (kernel without CONFIG_PSI)")
        except OSError as e:  # EOPNOTSUPP when booted with psi=0
            raise SourceUnavailable(f"{self.path}: {e.strerror} (psi disabled?)")
        for line in text.splitlines():
            if line.startswith("some "):
                fields = dict(kv.split("=", 1) for kv in line.split()[1:])
                return float(fields["avg10"])
        raise SourceUnavailable(f"{self.path}: no 'some' line")

    def probe(self) -> None:
        self._avg10()

    def sample(self) -> dict:
        return {"psi_some_avg10": _pct(self._avg10(), 100.0)}


def _mounts(proc: str) -> list[tuple[str, str, str, set[str]]]:
    """(root, mount point, fstype, super options) of every mount, from mountinfo."""
    out = []
    for line in _read(os.path.join(proc, "self", "mountinfo")).splitlines():
        pre, _, post = line.partition(" - ")
        pf, qf = pre.split(), post.split()
        if len(pf) >= 5 and len(qf) >= 3:
            out.append((pf[3], pf[4], qf[0], set(qf[2].split(","))))
    return out


def _cgroup_dir(mount_root: str, mount_point: str, cg_path: str) -> str:
    if mount_root != "/" and (cg_path == mount_root or cg_path.startswith(mount_root + "/")):
        cg_path = cg_path[len(mount_root):] or "/"
    return os.path.normpath(os.path.join(mount_point, cg_path.lstrip("/")))


class Cgroup(Source):
    """The CPU controller of the publisher's cgroup, in whichever hierarchy holds it."""
    name = "cgroup"

    def __init__(self, proc: str = PROC):
        self.proc = proc
        self.version = 0
        self.dir = self.mount = ""
        self._last: tuple[int, int] | None = None  # (nr_periods, nr_throttled)
        super().__init__()
        if self.version:
            self.name = f"cgroup_v{self.version}"

    @property
    def bit(self) -> int:
        return {1: abi.SOURCE_CGROUP_V1, 2: abi.SOURCE_CGROUP_V2}.get(self.version, 0)

    def probe(self) -> None:
        v1_path = v2_path = None
        for line in _read(os.path.join(self.proc, "self", "cgroup")).splitlines():
            hid, ctrls, path = line.split(":", 2)
            if hid == "0" and ctrls == "":
                v2_path = path
            elif "cpu" in ctrls.split(","):
                v1_path = path
        reasons = []
        for root, point, fstype, opts in _mounts(self.proc):
            if fstype == "cgroup" and "cpu" in opts and v1_path is not None:
                d = _cgroup_dir(root, point, v1_path)
                if os.path.exists(os.path.join(d, "cpu.cfs_quota_us")):
                    self.version, self.dir, self.mount = 1, d, point
                    return
                reasons.append(f"v1: no cpu.cfs_quota_us in {d}")
        for root, point, fstype, opts in _mounts(self.proc):
            if fstype == "cgroup2" and v2_path is not None:
                d = _cgroup_dir(root, point, v2_path)
                ctrls = os.path.join(point, "cgroup.controllers")
                at_root = os.path.normpath(d) == os.path.normpath(point)
                if os.path.exists(os.path.join(d, "cpu.max")) or (
                        at_root and os.path.exists(ctrls) and "cpu" in _read(ctrls).split()):
                    # The root cgroup has the controller but no cpu.max: nothing limits it.
                    self.version, self.dir, self.mount = 2, d, point
                    return
                reasons.append(f"v2: cpu controller not enabled for {d} (no cpu.max)")
        raise SourceUnavailable("; ".join(reasons) or "no cgroup cpu controller mounted")

    def _quota_cpus(self) -> float:
        """The tightest quota of the cgroup and its ancestors, in CPUs (0 = unlimited)."""
        best = 0.0
        d = self.dir
        while True:
            if self.version == 2:
                p = os.path.join(d, "cpu.max")
                if os.path.exists(p):
                    q, period = _read(p).split()
                    if q != "max":
                        c = int(q) / int(period)
                        best = c if not best else min(best, c)
            else:
                p = os.path.join(d, "cpu.cfs_quota_us")
                if os.path.exists(p):
                    q = int(_read(p))
                    if q > 0:
                        c = q / int(_read(os.path.join(d, "cpu.cfs_period_us")))
                        best = c if not best else min(best, c)
            if os.path.normpath(d) == os.path.normpath(self.mount) or d in ("/", ""):
                return best
            d = os.path.dirname(d)

    def sample(self) -> dict:
        stat = {}
        for line in _read(os.path.join(self.dir, "cpu.stat")).splitlines():
            k, _, v = line.partition(" ")
            if v.strip().isdigit():
                stat[k] = int(v)
        out = {"cg_quota_mcpu": round(self._quota_cpus() * 1000)}
        if "nr_periods" in stat and "nr_throttled" in stat:
            now = (stat["nr_periods"], stat["nr_throttled"])
            if self._last is not None:
                out["cg_throttled"] = _pct(now[1] - self._last[1], now[0] - self._last[0])
            self._last = now
        return out


class Cpuid(Source):
    """The hypervisor's CPUID leaves."""
    name = "cpuid"
    bit = abi.SOURCE_CPUID

    def __init__(self, dev: str = "/dev/cpu/0/cpuid"):
        self.dev = dev
        self._fn = None
        super().__init__()

    def probe(self) -> None:
        from .. import _core
        if hasattr(_core, "cpuid"):
            self._fn = _core.cpuid
            self.via = "pvpatch._core.cpuid"
        elif os.path.exists(self.dev):
            fd = os.open(self.dev, os.O_RDONLY | os.O_CLOEXEC)  # cpuid driver: pread at leaf

            def dev_cpuid(leaf, subleaf=0, fd=fd):
                return struct.unpack("<IIII", os.pread(fd, 16, leaf | (subleaf << 32)))
            self._fn = dev_cpuid
            self.via = self.dev
        else:
            raise SourceUnavailable(f"pvpatch._core has no cpuid and {self.dev} is missing "
                                    "(modprobe cpuid)")

    def sample(self) -> dict:
        ecx1 = self._fn(1, 0)[2]
        if not ecx1 & (1 << 31):  # CPUID.1:ECX.hypervisor
            return {"hv_max_leaf": 0, "hv_signature": b"", "hv_features": 0, "hv_hints": 0}
        a, b, c, d = self._fn(HV_LEAF, 0)
        sig = struct.pack("<III", b, c, d)
        out = {"hv_max_leaf": a, "hv_signature": sig, "hv_features": 0, "hv_hints": 0}
        if a >= HV_LEAF + 1 or (sig == KVM_SIGNATURE and a == 0):  # old KVM reports 0
            fa, _, _, fd = self._fn(HV_LEAF + 1, 0)
            out["hv_features"], out["hv_hints"] = fa, fd
        return out


def default_sources() -> list[Source]:
    return [ProcStat(), Psi(), Cgroup(), Cpuid()]
