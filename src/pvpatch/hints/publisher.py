"""The host side: decide whether this machine is oversubscribed, and publish the hint page.

Decider   measurements -> REALTIME or not, with hysteresis: oversubscription is entered when any
          measure crosses its high threshold for `enter_samples` consecutive samples, and left only
          when every measure is below its low threshold for `leave_samples` (more) samples.  It
          starts oversubscribed: REALTIME must be earned, so a fresh publisher never hands out a
          hint it has not measured.
Timeline  --simulate: `0:realtime,10:oversubscribed,20:realtime` overrides the decision from
          each time on (seconds since start); measurements are still real and published.
Publisher owns the page file: exclusive flock (a second publisher refuses, naming the holder),
          mode 0644, publication with the seqcount, the generation futex bumped and woken when
          what guests act on changes, the heartbeat every interval, and a clean stop that marks
          the page stopped (no hints) so guests fall back at once rather than after the
          staleness bound.
"""
from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import select
import stat
import time

from ..errors import PvpatchError
from . import abi, shm
from .sources import Source, default_sources

log = logging.getLogger("pvpatch.hints")


class PublisherError(PvpatchError):
    """The publisher cannot start or run; the message names the path."""


class PublisherBusy(PublisherError):
    """Another publisher holds the page; ``pid`` is its process id when known."""

    def __init__(self, path: str, pid: int | None):
        who = f"pid {pid}" if pid else "a process whose pid the page does not name yet"
        super().__init__(f"{path}: another hostd is publishing there ({who} holds its lock)")
        self.path = path
        self.pid = pid


# --- the decision ---------------------------------------------------------------------------

@dataclasses.dataclass
class Thresholds:
    """High (enter oversubscription) and low (leave it) thresholds, percentages in %."""
    steal_enter: float = 10.0
    steal_leave: float = 5.0
    psi_enter: float = 20.0
    psi_leave: float = 5.0
    throttled_enter: float = 10.0
    throttled_leave: float = 2.0
    enter_samples: int = 2
    leave_samples: int = 5


class Decider:
    """Hysteresis over samples (one call of update() per sampling interval)."""

    def __init__(self, thresholds: Thresholds | None = None):
        self.t = thresholds or Thresholds()
        self.oversubscribed = True  # REALTIME is earned, never assumed
        self.reason = abi.REASON_NONE
        self._enter_run = 0
        self._leave_run = 0

    @staticmethod
    def _cpus(m: dict) -> float | None:
        cpus = m.get("online_cpus")
        if cpus in (None, abi.UNKNOWN):
            return None
        q = m.get("cg_quota_mcpu")
        if q not in (None, abi.UNKNOWN, 0):
            cpus = min(cpus, max(1.0, q / 1000))
        return cpus

    def _enter_reason(self, m: dict) -> int:
        """The first measure above its high threshold, or 0."""
        t, pct = self.t, abi.PERCENT_SCALE
        cpus, run = self._cpus(m), m.get("runnable")
        if cpus is not None and run not in (None, abi.UNKNOWN) and run > cpus:
            return abi.REASON_RUNNABLE
        for key, limit, reason in (("steal", t.steal_enter, abi.REASON_STEAL),
                                   ("psi_some_avg10", t.psi_enter, abi.REASON_PSI),
                                   ("cg_throttled", t.throttled_enter, abi.REASON_THROTTLED)):
            v = m.get(key)
            if v not in (None, abi.UNKNOWN) and v >= limit * pct:
                return reason
        return 0

    def _calm(self, m: dict) -> bool:
        """Every measure below its low threshold (unmeasured ones do not block)."""
        t, pct = self.t, abi.PERCENT_SCALE
        cpus, run = self._cpus(m), m.get("runnable")
        if cpus is None or run in (None, abi.UNKNOWN) or run > cpus:
            return False  # without a runnable count there is no evidence for REALTIME
        for key, limit in (("steal", t.steal_leave), ("psi_some_avg10", t.psi_leave),
                           ("cg_throttled", t.throttled_leave)):
            v = m.get(key)
            if v not in (None, abi.UNKNOWN) and v >= limit * pct:
                return False
        return True

    def update(self, m: dict) -> bool:
        """Feed one sample; returns True when REALTIME holds."""
        why = self._enter_reason(m)
        if why:
            self._enter_run += 1
            self._leave_run = 0
            if not self.oversubscribed and self._enter_run >= self.t.enter_samples:
                self.oversubscribed = True
        elif self._calm(m):
            self._enter_run = 0
            self._leave_run += 1
            if self.oversubscribed and self._leave_run >= self.t.leave_samples:
                self.oversubscribed = False
        else:  # between the thresholds: keep the state, restart both runs
            self._enter_run = self._leave_run = 0
        if not self.oversubscribed:
            self.reason = abi.REASON_UNDERSUBSCRIBED
        elif why:
            self.reason = why  # else keep the last reason (REASON_NONE until one is seen)
        return not self.oversubscribed


SIM_STATES = {"realtime": abi.HINT_REALTIME, "oversubscribed": 0}


def parse_timeline(text: str) -> list[tuple[float, int]]:
    """`0:realtime,10:oversubscribed` -> [(0.0, HINT_REALTIME), (10.0, 0)]; PvpatchError names
    the bad item."""
    steps = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        t, sep, what = item.partition(":")
        try:
            at = float(t)
        except ValueError:
            at = None
        if not sep or at is None or at < 0 or at != at:
            raise PvpatchError(f"--simulate: '{item}' is not SECONDS:STATE (e.g. 10:realtime)")
        if what not in SIM_STATES:
            raise PvpatchError(f"--simulate: '{item}': state '{what}' is not one of "
                               f"{', '.join(SIM_STATES)}")
        if steps and at < steps[-1][0]:
            raise PvpatchError(f"--simulate: '{item}' goes back in time (after {steps[-1][0]:g})")
        steps.append((at, SIM_STATES[what]))
    if not steps:
        raise PvpatchError("--simulate: empty timeline")
    return steps


# --- the page -------------------------------------------------------------------------------

class Publisher:
    """Owns the page at `path`.  open() (or `with`) takes it; publish() writes it; close() stops.

    Not thread-safe: one thread publishes (the page has one writer by design)."""

    def __init__(self, path: str | None = None, interval_s: float = 1.0, *,
                 simulated: bool = False):
        self.path = path or abi.DEFAULT_PATH
        self.interval_ns = int(interval_s * 1e9)
        if not abi.MIN_INTERVAL_NS <= self.interval_ns <= abi.MAX_INTERVAL_NS:
            raise PublisherError(f"interval {interval_s} s outside "
                                 f"[{abi.MIN_INTERVAL_NS / 1e9}, {abi.MAX_INTERVAL_NS / 1e9}] s")
        self.fd: int | None = None
        self.map: shm.Mapping | None = None
        self.page = abi.HintPage(publisher_pid=os.getpid(), interval_ns=self.interval_ns)
        self.page.features = (abi.FEATURE_DYNAMIC_HINTS | abi.FEATURE_HEARTBEAT |
                              abi.FEATURE_MEASUREMENTS | (abi.FEATURE_SIMULATED if simulated
                                                          else 0))
        self.wakes = 0

    def open(self) -> "Publisher":
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as e:
            raise PublisherError(f"{self.path}: cannot open: {e.strerror} (errno {e.errno})") \
                from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise PublisherError(f"{self.path}: not a regular file")
            try:
                # One publisher per page.  flock, not a pid file: the kernel drops it when the
                # holder dies, SIGKILL included, so a crash never leaves the path locked.
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise PublisherBusy(self.path, self._holder(fd)) from None
            # Guests read, only the owner writes: whatever the umask or a previous owner set.
            os.fchmod(fd, 0o644)
            if st.st_size != abi.FILE_SIZE:
                os.ftruncate(fd, abi.FILE_SIZE)
            self.map = shm.Mapping(fd, abi.FILE_SIZE, writable=True)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        # Start from whatever generation the file holds (even garbage), plus one: a guest still
        # waiting on a previous publisher's value is woken by the first publication.
        self.page.generation = (self.map.load32(abi.OFF_GENERATION) + 1) & 0xFFFFFFFF
        self._published_generation = None
        now = time.monotonic_ns()
        self.page.started_ns = self.page.changed_ns = self.page.heartbeat_ns = now
        return self

    @staticmethod
    def _holder(fd: int) -> int | None:
        try:
            buf, _ = shm.snapshot(fd, abi.SIZE_V1)
            page = abi.decode(buf)
            return page.publisher_pid if page.magic == abi.MAGIC and page.publisher_pid else None
        except (abi.HintPageError, OSError):
            return None

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    def publish(self, hints: int, measurements: dict, reason: int, *,
                state: int = abi.STATE_RUNNING) -> bool:
        """Write one sample.  Returns True when the generation moved (guests were woken).

        The generation moves when what a guest acts on changes: active hints, state, features."""
        if self.map is None:
            raise PublisherError(f"{self.path}: publisher is not open")
        p = self.page
        now = time.monotonic_ns()
        key = (hints, state, p.features)
        moved = key != getattr(self, "_last_key", None)
        if moved and self._published_generation is not None:
            p.generation = (p.generation + 1) & 0xFFFFFFFF
        p.state, p.active_hints, p.reason = state, hints, reason
        p.ever_hints |= hints
        for name in ("online_cpus", "runnable", "steal", "psi_some_avg10", "cg_quota_mcpu",
                     "cg_throttled", "hv_max_leaf", "hv_features", "hv_hints", "hv_signature"):
            default = b"" if name == "hv_signature" else (
                0 if name.startswith("hv_") else abi.UNKNOWN)
            setattr(p, name, measurements.get(name, default))
        p.sources = measurements.get("sources", 0)
        p.heartbeat_ns = now
        if moved:
            p.changed_ns = now
        p.publications += 1
        # Steps 1-4 (odd, payload, generation, even): shm.Mapping.publish.
        p.seqcount = self.map.publish(abi.encode(p), p.generation)
        self._last_key = key
        self._published_generation = p.generation
        if moved:
            # Step 5: wake every guest sleeping on the old generation.  Shared futex (no
            # FUTEX_PRIVATE_FLAG): the waiters are other processes mapping the same file.
            shm.futex_wake(self.map.generation_addr)
            self.wakes += 1
        return moved

    def stop(self) -> None:
        """Mark the page stopped (no hints) and wake guests: they fall back at once."""
        if self.map is not None:
            m = {k: getattr(self.page, k) for k in ("online_cpus", "runnable", "steal",
                                                    "psi_some_avg10", "cg_quota_mcpu",
                                                    "cg_throttled", "hv_max_leaf",
                                                    "hv_features", "hv_hints", "hv_signature")}
            m["sources"] = self.page.sources
            self.publish(0, m, abi.REASON_STOPPED, state=abi.STATE_STOPPED)

    def close(self, *, mark_stopped: bool = True) -> None:
        """Stop (unless told not to: then the page goes stale) and release the page."""
        if self.map is not None:
            if mark_stopped:
                self.stop()
            self.map.close()
            self.map = None
        if self.fd is not None:
            os.close(self.fd)  # drops the flock
            self.fd = None


# --- hostd ----------------------------------------------------------------------------------

class Metrics:
    """Prometheus metrics for hostd, served on 127.0.0.1:port (0 picks a free port)."""

    def __init__(self, port: int):
        from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
        r = self.registry = CollectorRegistry()
        self.hint = Gauge("pvpatch_hint_active", "Hint in force (1) or not (0)", ["hint"],
                          registry=r)
        self.ever = Gauge("pvpatch_hint_ever", "Hint given at least once", ["hint"], registry=r)
        self.generation = Gauge("pvpatch_hints_generation", "Generation of the hint page",
                                registry=r)
        self.publications = Counter("pvpatch_hints_publications", "Pages published", registry=r)
        self.changes = Counter("pvpatch_hints_changes", "Publications that moved the "
                               "generation (guests woken)", registry=r)
        self.source = Gauge("pvpatch_hints_source_available", "Source available (1) or not",
                            ["source"], registry=r)
        self.measure = {}
        for field, help_ in (("online_cpus", "Online CPUs"),
                             ("runnable", "Runnable tasks, the publisher excluded"),
                             ("steal_pct", "CPU time stolen by the hypervisor, %"),
                             ("psi_some_avg10_pct", "PSI cpu some avg10, %"),
                             ("cgroup_quota_cpus", "cgroup CPU quota in CPUs (0: none)"),
                             ("cgroup_throttled_pct", "cgroup periods throttled, %")):
            self.measure[field] = Gauge(f"pvpatch_hints_{field}", help_, registry=r)
        try:
            self.server, self.thread = start_http_server(port, addr="127.0.0.1", registry=r)
        except OSError as e:
            raise PublisherError(f"--metrics-port {port}: {e.strerror} (errno {e.errno})") \
                from None
        self.port = self.server.server_port

    def update(self, page: abi.HintPage, moved: bool, sources: list[Source]) -> None:
        for bit, name in abi.HINTS.items():
            self.hint.labels(name).set(1 if page.active_hints & bit else 0)
            self.ever.labels(name).set(1 if page.ever_hints & bit else 0)
        self.generation.set(page.generation)
        self.publications.inc()
        if moved:
            self.changes.inc()
        for s in sources:
            self.source.labels(s.name).set(1 if s.available else 0)
        m = page.measurements()
        for field, g in self.measure.items():
            g.set(float("nan") if m[field] is None else m[field])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Hostd:
    """The publisher loop: sample every interval, decide, publish; --simulate steps on time."""

    def __init__(self, path: str | None = None, interval_s: float = 1.0, *,
                 timeline: list[tuple[float, int]] | None = None,
                 sources: list[Source] | None = None, thresholds: Thresholds | None = None,
                 metrics_port: int | None = None, on_publish=None):
        self.publisher = Publisher(path, interval_s, simulated=timeline is not None)
        self.interval_s = interval_s
        self.timeline = timeline or []
        self.sources = sources if sources is not None else default_sources()
        self.decider = Decider(thresholds)
        self.metrics_port = metrics_port
        self.metrics: Metrics | None = None
        self.on_publish = on_publish
        self._rfd, self._wfd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.stopping = False

    def request_stop(self) -> None:
        """Async-signal-safe enough for a Python signal handler: a flag and a pipe write."""
        self.stopping = True
        try:
            os.write(self._wfd, b"x")
        except BlockingIOError:
            pass

    def _simulated(self, elapsed: float) -> int | None:
        hints = None
        for at, h in self.timeline:
            if elapsed >= at:
                hints = h
        return hints

    def _sample(self) -> dict:
        m = {"sources": 0}
        for s in self.sources:
            was = s.available
            got = s.take()
            if was and not s.available:  # once, when it happens; its fields read UNKNOWN
                log.warning("hostd: source %s", s.describe())
            if got:
                m.update(got)
                m["sources"] |= s.bit
        return m

    def run(self, duration_s: float | None = None) -> None:
        pub = self.publisher
        pub.open()
        try:
            if self.metrics_port is not None:
                self.metrics = Metrics(self.metrics_port)
            t0 = time.monotonic()
            next_tick = t0
            measurements: dict = {}
            realtime = False
            while not self.stopping:
                now = time.monotonic()
                elapsed = now - t0
                if duration_s is not None and elapsed >= duration_s:
                    break
                if now >= next_tick:
                    measurements = self._sample()
                    realtime = self.decider.update(measurements)
                    next_tick = max(next_tick + self.interval_s, now)  # no catch-up bursts
                sim = self._simulated(elapsed)
                if sim is not None:
                    hints, reason = sim, abi.REASON_SIMULATED
                else:
                    hints = abi.HINT_REALTIME if realtime else 0
                    reason = self.decider.reason
                moved = pub.publish(hints, measurements, reason)
                if self.metrics:
                    self.metrics.update(pub.page, moved, self.sources)
                if self.on_publish:
                    self.on_publish(pub.page, moved)
                # Sleep until the next tick, the next timeline step or the end, whichever is
                # first; a stop request (signal) writes the pipe and ends the sleep at once.
                due = [next_tick]
                due += [t0 + at for at, _ in self.timeline if t0 + at > now]
                if duration_s is not None:
                    due.append(t0 + duration_s)
                timeout = max(0.0, min(due) - time.monotonic())
                r, _, _ = select.select([self._rfd], [], [], timeout)
                if r:
                    try:
                        os.read(self._rfd, 64)
                    except BlockingIOError:
                        pass
        finally:
            try:
                pub.close(mark_stopped=True)
            finally:
                if self.metrics:
                    self.metrics.close()
                os.close(self._rfd)
                os.close(self._wfd)

