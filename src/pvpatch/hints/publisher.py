"""The host side: decide whether this machine is oversubscribed, and publish the hint page.

Decider   measurements -> REALTIME or not, with hysteresis: oversubscription is entered when any
          measure crosses its high threshold for `enter_samples` consecutive samples, and left only
          when every measure is below its low threshold for `leave_samples` (more) samples.  It
          starts oversubscribed: REALTIME must be earned, so a fresh publisher never hands out a
          hint it has not measured.
Timeline  --simulate: `0:realtime,10:oversubscribed,20:realtime` overrides the decision from
          each time on (seconds since start); measurements are still real and published.
Publisher owns the page file: made by itself in a directory only it can write (trust.py), a
          lock only it can open (a second publisher refuses, naming the holder), publication
          with the seqcount through pwrite, the generation futex bumped and woken when what
          guests act on changes, repair of whatever is done to the page, the heartbeat every
          interval, and a clean stop that marks the page stopped (no hints) so guests fall back
          at once rather than after the staleness bound.
"""
from __future__ import annotations

import dataclasses
import fcntl
import logging
import math
import os
import select
import stat
import time

from ..errors import PvpatchError
from . import abi, shm, trust
from .metrics import DEFAULT_ADDR, HostdMetrics, MetricsServer, check_port
from .sources import Source, default_sources

log = logging.getLogger("pvpatch.hints")


class PublisherError(PvpatchError):
    """The publisher cannot start or run; the message names the path."""


class PublisherBusy(PublisherError):
    """Another publisher holds the page's lock; ``pids`` are the holders the kernel names
    (/proc/locks), ``pid`` the first of them (None if /proc/locks is not readable)."""

    def __init__(self, path: str, pids: list[int], lock_path: str):
        who = (("pid " if len(pids) == 1 else "pids ") + ", ".join(map(str, pids))
               if pids else "a process /proc/locks does not name")
        super().__init__(f"{path}: another publisher is running there ({who} holds its lock "
                         f"{lock_path})")
        self.path = path
        self.pids = pids
        self.pid = pids[0] if pids else None


# --- the decision ---------------------------------------------------------------------------

@dataclasses.dataclass
class Thresholds:
    """High (enter oversubscription) and low (leave it) thresholds.  Steal, PSI and throttling
    in %; runnable tasks per CPU (CPUs lowered to the cgroup quota); samples in a row."""
    steal_enter: float = 10.0
    steal_leave: float = 5.0
    psi_enter: float = 20.0
    psi_leave: float = 5.0
    throttled_enter: float = 10.0
    throttled_leave: float = 2.0
    runnable_per_cpu_enter: float = 1.0
    runnable_per_cpu_leave: float = 1.0
    enter_samples: int = 2
    leave_samples: int = 5

    def check(self) -> "Thresholds":
        """Raise PvpatchError naming the first threshold that makes no sense; returns self."""
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            name = f.name.replace("_", "-")
            if f.type == "int" or f.name.endswith("_samples"):
                if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1_000_000:
                    raise PvpatchError(f"threshold {name} {v!r}: must be an integer 1..1000000")
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v < 0:
                raise PvpatchError(f"threshold {name} {v!r}: must be a finite number >= 0")
            if not f.name.startswith("runnable") and v > 100:
                raise PvpatchError(f"threshold {name} {v!r}: a percentage, at most 100")
        for what in ("steal", "psi", "throttled", "runnable_per_cpu"):
            lo, hi = getattr(self, what + "_leave"), getattr(self, what + "_enter")
            if lo > hi:
                w = what.replace("_", "-")
                raise PvpatchError(f"threshold {w}-leave {lo:g} is above {w}-enter {hi:g}: "
                                   "leaving must need a calmer sample than entering")
        return self

    @classmethod
    def fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]


class Decider:
    """Hysteresis over samples (one call of update() per sampling interval)."""

    def __init__(self, thresholds: Thresholds | None = None):
        self.t = (thresholds or Thresholds()).check()
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
        if cpus is not None and run not in (None, abi.UNKNOWN) \
                and run > t.runnable_per_cpu_enter * cpus:
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
        if cpus is None or run in (None, abi.UNKNOWN) or run > t.runnable_per_cpu_leave * cpus:
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

    Taking the page (open), in order:
      1. the directory: created (mode 0755) if missing; it and its ancestors must be such that
         nobody but this uid and root can add, remove or rename names in it (trust.py);
      2. the lock: `<path>.lock`, mode 0600, created O_EXCL|O_NOFOLLOW or an existing one that
         this uid created; an exclusive flock on it.  Nobody else can open it, so no reader can
         hold it; a busy lock names its holders from /proc/locks;
      3. the page: an existing file is reused in place (guests keep their mappings) only if this
         uid created it: regular, owned by this uid, one link, mode 0644.  Anything else at the
         path (another user's file, a hard link, a symlink) is refused and left untouched.  A
         missing page is made as a new file, filled, then linked into place: guests never see a
         half-made page, and no existing file is ever adopted.

    While running, every publication first checks the page (_maintain): truncated -> restored in
    place; deleted, replaced or altered (links, mode) -> a new page atomically renamed over the
    path and the old one's sleepers woken so that they reopen.  Each repair moves the generation.
    The page is written with pwrite only (shm.publish), so nothing done to the file can raise
    SIGBUS here.

    Not thread-safe: one thread publishes (the page has one writer by design)."""

    def __init__(self, path: str | None = None, interval_s: float = 1.0, *,
                 simulated: bool = False, on_repair=None):
        if path is not None and not isinstance(path, (str, os.PathLike)):
            raise PublisherError(f"page path {path!r} is not a path")
        self.path = os.fspath(path) if path else abi.DEFAULT_PATH
        self.lock_path = self.path + ".lock"
        if not isinstance(interval_s, (int, float)) or not math.isfinite(interval_s):
            raise PublisherError(f"interval {interval_s!r} s is not a finite number")
        self.interval_ns = int(interval_s * 1e9)
        if not abi.MIN_INTERVAL_NS <= self.interval_ns <= abi.MAX_INTERVAL_NS:
            raise PublisherError(f"interval {interval_s} s outside "
                                 f"[{abi.MIN_INTERVAL_NS / 1e9}, {abi.MAX_INTERVAL_NS / 1e9}] s")
        self.fd: int | None = None
        self.lock_fd: int | None = None
        self.map: shm.Mapping | None = None
        self._ident: tuple[int, int] | None = None
        self._seq = 0
        self._last_key = None
        self._published_generation: int | None = None
        self._force_move = False
        self.page = abi.HintPage(publisher_pid=os.getpid(), interval_ns=self.interval_ns)
        self.page.features = (abi.FEATURE_DYNAMIC_HINTS | abi.FEATURE_HEARTBEAT |
                              abi.FEATURE_MEASUREMENTS | (abi.FEATURE_SIMULATED if simulated
                                                          else 0))
        self.wakes = 0
        self.repairs = {"truncated": 0, "deleted": 0, "replaced": 0, "altered": 0, "resumed": 0}
        self.on_repair = on_repair   # on_repair(kind, message): each repair, said once
        self._failing = ""           # a repair that failed: said once until it succeeds

    # --- taking the page ------------------------------------------------------------------

    def open(self) -> "Publisher":
        d = os.path.dirname(os.path.abspath(self.path))
        try:
            os.mkdir(d, trust.DEFAULT_DIR_MODE)
            # Ours, just made: guests must be able to look the page up whatever the umask.
            dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fchmod(dfd, trust.DEFAULT_DIR_MODE)
            finally:
                os.close(dfd)
        except FileExistsError:
            pass
        except OSError as e:
            raise PublisherError(f"{self.path}: cannot create the directory {d}: {e.strerror} "
                                 f"(errno {e.errno}); run as root or give a path in a directory "
                                 "you own") from None
        problem = trust.directory_problem(d)
        if problem:
            raise PublisherError(f"{self.path}: {problem}")
        self._lock()
        now = time.monotonic_ns()
        p = self.page
        p.started_ns = p.changed_ns = p.heartbeat_ns = now
        try:
            self._take_page()
        except BaseException:
            self._unlock()
            raise
        return self

    def _lock(self) -> None:
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            try:
                fd = os.open(self.lock_path, flags | os.O_CREAT | os.O_EXCL, trust.LOCK_MODE)
                os.fchmod(fd, trust.LOCK_MODE)  # ours, just made: whatever the umask did
            except FileExistsError:
                fd = os.open(self.lock_path, flags)
        except OSError as e:
            raise PublisherError(f"{self.path}: cannot open the lock {self.lock_path}: "
                                 f"{e.strerror} (errno {e.errno})") from None
        try:
            problem = trust.own_file_problem(os.fstat(fd), f"lock {self.lock_path}",
                                             trust.LOCK_MODE)
            if problem:
                raise PublisherError(f"{self.path}: {problem}")
            try:
                # One publisher per page.  flock, not a pid file: the kernel drops it when the
                # holder dies, SIGKILL included, so a crash never leaves the path locked.
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise PublisherBusy(self.path, trust.lock_holders(fd), self.lock_path) from None
            os.ftruncate(fd, 0)  # for people reading the lock file; the error uses /proc/locks
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self.lock_fd = fd

    def _unlock(self) -> None:
        if self.lock_fd is not None:
            os.close(self.lock_fd)  # drops the flock; the file stays (removing it would race)
            self.lock_fd = None

    def _take_page(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            st = None
        except OSError as e:
            raise PublisherError(f"{self.path}: {e.strerror} (errno {e.errno})") from None
        if st is None:
            self.page.generation = 1
            self._install(*self._new_file(replace=False))
            return
        problem = trust.own_file_problem(st, "the page", trust.PAGE_MODE)
        if problem:
            raise PublisherError(f"{self.path}: {problem}")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as e:
            raise PublisherError(f"{self.path}: cannot open: {e.strerror} (errno {e.errno})") \
                from None
        try:
            st2 = os.fstat(fd)
            problem = trust.own_file_problem(st2, "the page", trust.PAGE_MODE)
            if (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino):
                problem = "the page changed while it was being opened"
            if problem:
                raise PublisherError(f"{self.path}: {problem}")
            if st2.st_size != abi.FILE_SIZE:
                os.ftruncate(fd, abi.FILE_SIZE)  # our own file: restore its size
            # Reused in place: start from whatever generation the file holds (even garbage),
            # plus one, so that a guest still waiting on a previous publisher's value is woken
            # by the first publication.
            self.page.generation = ((shm.load32(fd, abi.OFF_GENERATION) or 0) + 1) & 0xFFFFFFFF
            self._seq = shm.load32(fd, abi.OFF_SEQCOUNT) or 0
            self._install(fd, shm.Mapping(fd, abi.FILE_SIZE, writable=False), st2, fresh=False)
        except BaseException:
            if self.fd != fd:
                os.close(fd)
            raise

    def _new_file(self, *, replace: bool):
        """A new page file holding the current page, put at the path: link() when the path is
        free (fails rather than take a name someone else made), rename() over it when replacing
        (atomic: guests find the old page or the new one, never none).  Returns what _install
        takes."""
        d, base = os.path.split(os.path.abspath(self.path))
        tmp = os.path.join(d, f".{base}.{os.getpid()}.new")
        try:
            os.unlink(tmp)  # a leftover of an earlier attempt by this very pid
        except FileNotFoundError:
            pass
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     trust.PAGE_MODE)
        try:
            os.fchmod(fd, trust.PAGE_MODE)  # ours, just made: guests read, only we write
            os.ftruncate(fd, abi.FILE_SIZE)
            p = self.page
            p.seqcount = shm.publish(fd, abi.encode(p), 0, p.generation)
            if replace:
                os.rename(tmp, self.path)
            else:
                try:
                    os.link(tmp, self.path)
                finally:
                    os.unlink(tmp)
            st = os.fstat(fd)
            m = shm.Mapping(fd, abi.FILE_SIZE, writable=False)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            os.close(fd)
            raise
        return fd, m, st

    def _install(self, fd: int, m: shm.Mapping, st: os.stat_result, *, fresh: bool = True):
        self.fd, self.map, self._ident = fd, m, (st.st_dev, st.st_ino)
        if fresh:  # the file already holds the current page: it is what guests acted on
            self._seq = self.page.seqcount
            self._last_key = (self.page.active_hints, self.page.state, self.page.features)
            self._published_generation = self.page.generation
        else:
            self._last_key = self._published_generation = None

    # --- keeping it ------------------------------------------------------------------------

    def _maintain(self, now: int) -> None:
        """Check the page before a publication and repair what was done to it."""
        p = self.page
        if self._published_generation is not None and \
                now - p.heartbeat_ns > p.stale_bound_ns():
            # This process did not run for longer than the staleness bound (SIGSTOP, a frozen
            # VM): guests fell back.  Move the generation so that they are woken by this
            # publication and measure their switch back from it.
            self._repaired("resumed", f"no publication for {(now - p.heartbeat_ns) / 1e9:.3f} s "
                                      "(stopped?); guests woken")
        try:
            st = os.fstat(self.fd)
            try:
                pst = os.lstat(self.path)
            except FileNotFoundError:
                pst = None
            if pst is None:
                self._replace("deleted", "the page was deleted; recreated")
            elif (pst.st_dev, pst.st_ino) != self._ident:
                self._replace("replaced", f"the path names another file (owner uid "
                                          f"{pst.st_uid}, {pst.st_size} bytes); the page was "
                                          "put back")
            elif st.st_nlink != 1 or stat.S_IMODE(st.st_mode) != trust.PAGE_MODE:
                self._replace("altered", f"the page has {st.st_nlink} links, mode "
                                         f"{stat.S_IMODE(st.st_mode):#o}; replaced by a new one")
            elif st.st_size != abi.FILE_SIZE:
                os.ftruncate(self.fd, abi.FILE_SIZE)
                self._repaired("truncated", f"the page was truncated to {st.st_size} bytes; "
                                            "restored and republished")
        except OSError as e:
            msg = f"cannot repair the page: {e.strerror} (errno {e.errno}); retrying"
            if msg != self._failing:
                self._failing = msg
                self._say("failed", msg)
            return
        if self._failing:
            self._failing = ""

    def _replace(self, kind: str, message: str) -> None:
        old_fd, old_map = self.fd, self.map
        self.page.generation = (self.page.generation + 1) & 0xFFFFFFFF
        self._install(*self._new_file(replace=True))
        self._repaired(kind, message)
        # Guests asleep on the old file's futex: wake them; they re-read, see that the path
        # names another file and reopen it.
        try:
            shm.futex_wake(old_map.generation_addr)
        except PvpatchError:
            pass
        old_map.close()
        os.close(old_fd)

    def _repaired(self, kind: str, message: str) -> None:
        self.repairs[kind] += 1
        self._force_move = True
        self._say(kind, message)

    def _say(self, kind: str, message: str) -> None:
        if self.on_repair is not None:
            self.on_repair(kind, f"{self.path}: {message}")
        else:
            log.warning("hostd: %s: %s", self.path, message)

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    def publish(self, hints: int, measurements: dict, reason: int, *,
                state: int = abi.STATE_RUNNING) -> bool:
        """Write one sample.  Returns True when the generation moved (guests were woken).

        The generation moves when what a guest acts on changes (active hints, state, features),
        and when the page was repaired or the publisher resumes after a gap: guests re-read."""
        if self.fd is None:
            raise PublisherError(f"{self.path}: publisher is not open")
        now = time.monotonic_ns()
        self._maintain(now)
        p = self.page
        key = (hints, state, p.features)
        moved = key != self._last_key or self._force_move
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
        now = time.monotonic_ns()
        p.heartbeat_ns = now
        if moved:
            p.changed_ns = now
        p.publications += 1
        # Steps 1-4 (odd, payload, generation, even): shm.publish.
        p.seqcount = self._seq = shm.publish(self.fd, abi.encode(p), self._seq, p.generation)
        self._last_key = key
        self._published_generation = p.generation
        self._force_move = False
        if moved:
            # Step 5: wake every guest sleeping on the old generation.  Shared futex (no
            # FUTEX_PRIVATE_FLAG): the waiters are other processes mapping the same file.
            try:
                shm.futex_wake(self.map.generation_addr)
            except PvpatchError:
                self._force_move = True  # EFAULT: truncated just now; the next round repairs
            self.wakes += 1
        return moved

    def stop(self) -> None:
        """Mark the page stopped (no hints) and wake guests: they fall back at once."""
        if self.fd is not None:
            m = {k: getattr(self.page, k) for k in ("online_cpus", "runnable", "steal",
                                                    "psi_some_avg10", "cg_quota_mcpu",
                                                    "cg_throttled", "hv_max_leaf",
                                                    "hv_features", "hv_hints", "hv_signature")}
            m["sources"] = self.page.sources
            self.publish(0, m, abi.REASON_STOPPED, state=abi.STATE_STOPPED)

    def close(self, *, mark_stopped: bool = True) -> None:
        """Stop (unless told not to: then the page goes stale) and release the page."""
        try:
            if self.fd is not None and mark_stopped:
                self.stop()
        finally:
            if self.map is not None:
                self.map.close()
                self.map = None
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None
            self._unlock()


# --- hostd ----------------------------------------------------------------------------------

class Hostd:
    """The publisher loop: sample every interval, decide, publish; --simulate steps on time."""

    def __init__(self, path: str | None = None, interval_s: float = 1.0, *,
                 timeline: list[tuple[float, int]] | None = None,
                 sources: list[Source] | None = None, thresholds: Thresholds | None = None,
                 metrics_port: int | None = None, metrics_addr: str = DEFAULT_ADDR,
                 on_publish=None, on_repair=None):
        check_port(metrics_port, "--metrics-port")
        self.publisher = Publisher(path, interval_s, simulated=timeline is not None,
                                   on_repair=on_repair)
        self.interval_s = interval_s
        self.timeline = timeline or []
        self.sources = sources if sources is not None else default_sources()
        self.decider = Decider(thresholds)
        self.metrics_port = metrics_port
        self.metrics_addr = metrics_addr
        self.metrics: HostdMetrics | None = None
        self.metrics_server: MetricsServer | None = None
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
        # The metrics server first: a port or address that fails must leave the page untouched.
        if self.metrics_port is not None:
            self.metrics = HostdMetrics()
            self.metrics_server = MetricsServer(self.metrics.registry, self.metrics_port,
                                                self.metrics_addr)
        try:
            pub.open()
        except BaseException:
            if self.metrics_server:
                self.metrics_server.close()
            raise
        try:
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
                    self.metrics.update(pub.page, moved, self.sources, pub.repairs)
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
                if self.metrics_server:
                    self.metrics_server.close()
                os.close(self._rfd)
                os.close(self._wfd)

