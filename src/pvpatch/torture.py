"""locktorture for pvpatch: writer threads (in C) hammer one lock while this module reports,
switches the lock group's variant live, and watches for stalls.

One run cycles through *configurations*: (lock kind, variant) pairs such as
("pvpatch", "native"), ("pvpatch", "pv"), ("pthread-mutex", None).  With more than one, the
writers move to the next every ``toggle_every`` seconds, so that every configuration is measured
in the same process under the same noise, side by side; the summary gives each one's rate and
the ratios.  Writes counted while a switch is in progress belong to no configuration.

Output follows the kernel's locktorture (kernel/locking/locktorture.c: the statistics line of
__torture_print_stats, the end line of lock_torture_print_module_parms; the ``<type>-torture:``
prefix as Documentation/locking/locktorture.rst shows it)::

    pvpatch-torture:--- Start of test: hold_ns=0 locks=pvpatch mode=toggle ... nwriters_stress=4
    pvpatch-torture: Writes:  Total: 1048759000  Max/Min: 131244/130977   Fail: 0
    # toggle pv
    ...
    pvpatch-torture:--- End of test: SUCCESS: hold_ns=0 locks=pvpatch mode=toggle ...

The statistics line is the kernel's format string, ``"%s:  Total: %lld  Max/Min: %ld/%ld %s  Fail:
%d %s"``, field for field: ``???`` stands between Max/Min and Fail when Max/2 > Min in integer
arithmetic (a starved writer), ``!!!`` after Fail when it is not 0; an empty field leaves its
spaces (hence three spaces before ``Fail:`` and a trailing space).  One difference, on purpose:
Fail is the number of violations, where the kernel prints 0 or 1.  With several locks side by
side, each interval prints one line per lock, prefixed with that lock's name.
"""
from __future__ import annotations

import json
import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from . import _core
from .errors import PvpatchError

KINDS: tuple[str, ...] = tuple(k for k in _core.torture_kinds() if k != "none")
MODES = ("native", "pv", "auto", "toggle")
TORTURE_FLAG = "-torture:"        # include/linux/torture.h
# kernel/locking/locktorture.c, __torture_print_stats(): the format the statistics line follows.
KERNEL_STATS_FORMAT = "%s:  Total: %lld  Max/Min: %ld/%ld %s  Fail: %d %s"
JSON_SCHEMA = 1                   # torture --json; bumped when a field changes meaning


class TortureError(PvpatchError, ValueError):
    """A torture configuration that cannot run; the message names the option at fault."""


@dataclass
class Config:
    writers: int = 0                 # 0: 2 x online CPUs, as locktorture
    duration: float = 10.0
    stat_interval: float = 1.0
    mode: str = "toggle"             # native | pv | auto | toggle (pvpatch's variant)
    toggle_every: float = 1.0        # seconds per configuration when there are several
    hold_ns: int = 0                 # critical-section length
    locks: list[str] = field(default_factory=lambda: ["pvpatch"])
    stall_timeout: float = 10.0      # no acquisition at all for this long: a stall
    hints_path: str | None = None    # --mode auto: the hint page
    pv_spin: int | None = None       # pv waiters' spin bound (None: the library's default)
    rescue: float | None = None      # sleepers' rescue timeout, s (None: the default)
    quiet: bool = False              # no '# toggle' / '# lock' line per switch

    def check(self) -> None:
        for name in ("duration", "stat_interval", "toggle_every", "stall_timeout", "rescue"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v)):
                raise TortureError(f"--{name.replace('_', '-')} {v}: must be a finite number")
        if self.writers < 0 or self.writers > 1024:
            raise TortureError(f"--writers {self.writers}: must be 1..1024 (0: 2 x CPUs)")
        if not self.duration > 0:
            raise TortureError(f"--duration {self.duration}: must be > 0")
        if not self.stat_interval > 0:
            raise TortureError(f"--stat-interval {self.stat_interval}: must be > 0")
        if not self.toggle_every > 0:
            raise TortureError(f"--toggle-every {self.toggle_every}: must be > 0")
        if not 0 <= self.hold_ns <= 10**10:
            raise TortureError(f"--hold-ns {self.hold_ns}: must be 0..10000000000 (10 s)")
        if self.pv_spin is not None and not 0 <= self.pv_spin <= 1 << 24:
            raise TortureError(f"--pv-spin {self.pv_spin}: must be 0..{1 << 24}")
        if self.rescue is not None and not 0.001 <= self.rescue <= 3600:
            raise TortureError(f"--rescue {self.rescue:g}: must be 0.001..3600 s")
        if not self.stall_timeout > 0:
            raise TortureError(f"--stall-timeout {self.stall_timeout}: must be > 0")
        if self.mode not in MODES:
            raise TortureError(f"--mode {self.mode!r}: must be one of {', '.join(MODES)}")
        if not self.locks:
            raise TortureError("--lock: name at least one lock")
        for k in self.locks:
            if k not in KINDS:
                raise TortureError(f"--lock {k!r}: must be one of {', '.join(KINDS)}")
        if len(set(self.locks)) != len(self.locks):
            raise TortureError(f"--lock {','.join(self.locks)}: a lock is named twice")
        if self.mode == "auto":
            import pvpatch
            if not hasattr(pvpatch, "auto"):
                raise TortureError("--mode auto needs host hints (pvpatch.auto), which this "
                                   "pvpatch does not have; use native, pv or toggle")
            if len(self.configs()) > 1:
                raise TortureError("--mode auto lets host hints pick the variant; it cannot "
                                   "rotate through several locks (give one --lock)")

    def configs(self) -> list[tuple[str, str | None]]:
        out: list[tuple[str, str | None]] = []
        for k in self.locks:
            if k != "pvpatch":
                out.append((k, None))
            elif self.mode == "toggle":
                out += [(k, "native"), (k, "pv")]
            else:
                out.append((k, self.mode))
        return out


def config_name(cfg: tuple[str, str | None]) -> str:
    kind, variant = cfg
    return f"{kind} {variant}" if variant else kind


@dataclass
class Interval:
    t: float           # seconds since the start, at the end of the interval
    total: int         # cumulative writes on this lock
    max: int           # cumulative writes of the busiest writer, on this lock
    min: int           # ... of the least busy one
    fail: int          # cumulative mutual-exclusion violations on this lock
    mode: str          # configuration at the end of the interval
    writes: int        # writes on this lock in this interval
    lost_wakeups: int  # cumulative late/lost wake-ups (rescued sleepers), whole run
    lock: str = ""     # the lock these figures are for (one Interval per lock per line)


@dataclass
class Segment:
    t0: float
    t1: float
    config: str
    writes: int


@dataclass
class Result:
    config: dict
    intervals: list[Interval]
    segments: list[Segment]
    switches: int
    switch_failures: list[str]
    fail: int
    total: int
    lost_wakeups: int
    lost_updates: dict[str, int]
    stalled: bool
    stuck_writers: list[int]
    rates: dict[str, float]
    ratios: dict[str, float]
    lock_stats: dict[str, int]
    success: bool
    reasons: list[str]
    auto_switches: list[dict] = field(default_factory=list)  # --mode auto: the hint switches
    auto_final: dict = field(default_factory=dict)  # --mode auto: the agent's state at the end
    progress_gaps: list[dict] = field(default_factory=list)  # the longest ProgressGaps.gaps()
    progress_gaps_total: int = 0

    def summary(self) -> dict:
        return {"total": self.total, "fail": self.fail, "switches": self.switches,
                "switch_failures": len(self.switch_failures), "lost_wakeups": self.lost_wakeups,
                "lost_updates": self.lost_updates, "stalled": self.stalled,
                "stuck_writers": self.stuck_writers, "rates": self.rates,
                "ratios": self.ratios,
                "lock_stats": self.lock_stats, "success": self.success, "reasons": self.reasons,
                "auto_switches": self.auto_switches, "auto_final": self.auto_final,
                "progress_gaps": self.progress_gaps,
                "progress_gaps_total": self.progress_gaps_total}

    def as_json(self) -> dict:
        return {"schema": JSON_SCHEMA, "config": self.config,
                "intervals": [asdict(i) for i in self.intervals],
                "segments": [asdict(s) for s in self.segments], "summary": self.summary()}


def format_line(total: int, mx: int, mn: int, fail: int, lock: str = "pvpatch") -> str:
    """One locktorture statistics line: KERNEL_STATS_FORMAT with the kernel's arguments
    ("Writes", sum, max, min, max / 2 > min ? "???" : "", fail, fail ? "!!!" : ""), after the
    lock's ``<type>-torture: `` prefix."""
    starved = "???" if mx // 2 > mn else ""   # C's long division
    return (f"{lock}{TORTURE_FLAG} Writes:  Total: {total}  Max/Min: {mx}/{mn} {starved}  "
            f"Fail: {fail} {'!!!' if fail else ''}")


def params_line(config: "Config", tag: str) -> str:
    """The kernel's start and end line (lock_torture_print_module_parms): the type, '--- ', the
    tag, ': ' and every parameter as name=value, in the kernel's names where it has one."""
    c = config
    params = {"hold_ns": c.hold_ns, "locks": ",".join(c.locks), "mode": c.mode,
              "nreaders_stress": 0, "nwriters_stress": c.writers,
              "stat_interval": f"{c.stat_interval:g}", "toggle_every": f"{c.toggle_every:g}"}
    return (f"{','.join(c.locks)}{TORTURE_FLAG}--- {tag}: "
            + " ".join(f"{k}={v}" for k, v in params.items()))


def format_ratio(x: float) -> str:
    """A ratio with the precision it has: three significant figures, whole numbers (with
    thousands separators) from 1,000 up."""
    if x >= 1000:
        return f"{x:,.0f}x"
    if x <= 0 or not math.isfinite(x):
        return f"{x:g}x"
    # Fixed point, never an exponent (a collapsed lock gives ratios like 0.00000223x).
    decimals = max(0, 2 - math.floor(math.log10(x)))
    digits = f"{float(f'{x:.3g}'):.{decimals}f}"
    return (digits.rstrip("0").rstrip(".") if "." in digits else digits) + "x"


def ratio_pairs(rates: dict[str, float], writers: int, cpus: int) -> list[tuple[str, str]]:
    """Which ratios to print, each once, in the README's direction: a pvpatch configuration over
    any other lock; between pvpatch's own variants, the one meant for the load over the other
    (pv / native with more writers than CPUs, native / pv otherwise)."""
    names = list(rates)
    ours = [n for n in names if n.startswith("pvpatch ")]
    others = [n for n in names if not n.startswith("pvpatch ")]
    pairs = []
    if "pvpatch native" in ours and "pvpatch pv" in ours:
        pairs.append(("pvpatch pv", "pvpatch native") if writers > cpus
                     else ("pvpatch native", "pvpatch pv"))
    pairs += [(a, b) for a in ours for b in others]
    for i, a in enumerate(others):  # other locks among themselves, in --lock order
        pairs += [(a, b) for b in others[i + 1:]]
    return pairs


def _lock_word(v: int) -> str:
    tail = v >> 16
    return (f"{v:#010x} (locked {v & 0xff:#x}, pending {(v >> 8) & 0xff}, "
            f"tail {'empty' if not tail else f'tid {(tail >> 2) - 1} node {tail & 3}'})")


def state_dump(handle, why: str) -> list[str]:
    """Everything worth knowing about a stuck run, as '# ' lines."""
    import pvpatch
    from . import locks
    lines = [f"# state dump: {why}"]
    try:
        st = _core.torture_state(handle)
        lines.append(f"#   lock word {_lock_word(st['lock_word'])} at {st['lock_addr']:#x}, "
                     f"writers on {st['kind']}")
        lines.append(f"#   variant {pvpatch.current().get('lock')}, mode {locks.mode()}, "
                     f"pv_inflight {_core.lock_pv_inflight()}, "
                     f"ticket {st['ticket_next']}/{st['ticket_owner']}, tas {st['tas']}")
        for w in st["writers"]:
            lines.append(f"#   writer {w['id']}: {w['where']} ({w['kind']}), "
                         f"writes {w['writes']}, fails {w['fails']}")
        for t in _core.lock_threads():
            lines.append(f"#   lock thread tid {t['tid']}: {t['where']}, depth {t['depth']}, "
                         f"pv_active {t['pv_active']}, lock {t['lock']:#x}, "
                         f"node {t['node_wait']}")
        stats = _core.lock_stats()
        lines.append("#   lock stats " + " ".join(f"{k}={v}" for k, v in stats.items() if v))
    except Exception as exc:  # a dump must never hide the failure it reports
        lines.append(f"#   (dump incomplete: {exc!r})")
    return lines


class Watchdog(threading.Thread):
    """Turns a stall into a failure.  Two kinds: the writers make no acquisition at all for
    `timeout` seconds, or the main loop (which may be the stuck part: a switch that never
    returns) does not come round for `timeout` + `grace` seconds.  Either is reported with a
    state dump; with hard_exit, a main loop that is still stuck `timeout` seconds after the
    report ends the process with status 3 rather than let it hang."""

    def __init__(self, handle, timeout: float, grace: float, on_stall, hard_exit: bool):
        super().__init__(name="pvpatch-torture-watchdog", daemon=True)
        self.handle, self.timeout, self.grace = handle, timeout, grace
        self.on_stall, self.hard_exit = on_stall, hard_exit
        self.end_line = "End of test: FAILURE"  # the run's own end line, set by Torture.run
        self.stalled = threading.Event()
        self.heartbeat = time.monotonic()
        self._stop = threading.Event()

    def beat(self) -> None:
        self.heartbeat = time.monotonic()

    def run(self) -> None:
        last, since = -1, time.monotonic()
        while not self._stop.wait(min(0.1, self.timeout / 10)):
            total = sum(_core.torture_read(self.handle)[0])
            now = time.monotonic()
            if total != last:
                last, since = total, now
            if now - since > self.timeout:
                why = f"no acquisition for {now - since:.1f} s"
            elif now - self.heartbeat > self.timeout + self.grace:
                why = f"the main loop has not come round for {now - self.heartbeat:.1f} s"
            else:
                continue
            self.stalled.set()
            self.on_stall(state_dump(self.handle, why))
            if not self._stop.wait(self.timeout) and self.hard_exit:
                self.on_stall(["# the run does not end: giving up", self.end_line])
                os._exit(3)
            return

    def stop(self) -> None:
        self._stop.set()


# ---- progress gaps ----------------------------------------------------------------------

#: A writer's stretch without an acquisition is reported when it is longer than this many
#: times its median acquire latency (a 2-3 s stall of one writer once ended as a SUCCESS,
#: the stall bound being 10 s).
GAP_FACTOR = 100
GAP_SAMPLE_S = 0.01   # how often the run loop samples the writers' counts


@dataclass
class ProgressGap:
    writer: int
    t0: float          # seconds since the start: its last acquisition seen before the gap
    seconds: float     # at least this long without an acquisition
    median_latency_s: float


class ProgressGaps:
    """Each writer's stretches without an acquisition, from its write count sampled every
    GAP_SAMPLE_S.  A gap is bounded from below: between the last sample that saw the count
    change and the last sample that saw it unchanged, the writer made no acquisition at all.
    A writer's acquire latency is the time between samples over the acquisitions made in it
    (its median over the run), so a gap is reported when it is longer than GAP_FACTOR times
    that, and longer than one sampling period (shorter ones cannot be seen)."""

    def __init__(self, writers: int, t0: float):
        self.t0 = t0
        self.prev_t = t0
        self.count = [0] * writers
        self.changed = [t0] * writers     # when its count was last seen to change
        self.latency: list[list[float]] = [[] for _ in range(writers)]
        self.spans: list[tuple[int, float, float]] = []   # (writer, from, to)

    def sample(self, now: float, writes: list[int]) -> None:
        for i, w in enumerate(writes[:len(self.count)]):
            d = w - self.count[i]
            if d > 0:
                self.latency[i].append((now - self.prev_t) / d)
                if self.prev_t - self.changed[i] > 0:
                    self.spans.append((i, self.changed[i], self.prev_t))
                self.count[i] = w
                self.changed[i] = now
        self.prev_t = now

    def gaps(self) -> list[ProgressGap]:
        """The gaps over the threshold, longest first (a writer still without progress at
        the last sample counts up to it)."""
        spans = self.spans + [(i, self.changed[i], self.prev_t) for i in range(len(self.count))
                              if self.prev_t > self.changed[i]]
        out = []
        for i, a, b in spans:
            lat = sorted(self.latency[i])
            med = lat[len(lat) // 2] if lat else 0.0
            if b - a > max(GAP_FACTOR * med, GAP_SAMPLE_S):
                out.append(ProgressGap(i, a - self.t0, b - a, med))
        return sorted(out, key=lambda g: -g.seconds)


def report_gaps(gaps: list[dict], total: int, say: Callable[[str], None]) -> None:
    """One line with the number of gaps, then the longest (at most 5)."""
    if not gaps:
        return
    say(f"# progress gaps longer than {GAP_FACTOR}x the writer's median acquire latency: "
        f"{total}")
    for g in gaps[:5]:
        say(f"#   writer {g['writer']}: no acquisition for {g['seconds']:.3f} s from "
            f"t={g['t0']:.3f} s (median acquire latency "
            f"{g['median_latency_s'] * 1e6:.2f} us)")


class Torture:
    """One run.  `out` receives the report line by line (print by default)."""

    def __init__(self, config: Config, out: Callable[[str], None] | None = None,
                 hard_exit_on_hang: bool = False):
        config.check()
        if config.writers == 0:
            config.writers = 2 * (os.cpu_count() or 1)
        self.config = config
        self.out = out or (lambda s: print(s, flush=True))
        self.hard_exit_on_hang = hard_exit_on_hang
        self._print_lock = threading.Lock()

    def _say(self, line: str) -> None:
        with self._print_lock:
            self.out(line)

    # -- configurations -------------------------------------------------------------------

    def _enter(self, handle, cfg, prev) -> str | None:
        """Move the writers to configuration `cfg`; returns an error text if the switch did not
        complete (the run goes on: the lock is left in a correct state)."""
        import pvpatch
        from . import locks
        kind, variant = cfg
        err = None
        if variant in ("native", "pv") and pvpatch.current()["lock"] != variant:
            try:
                pvpatch.runtime_patch({"lock": variant})
            except locks.LockSwitchIncomplete as exc:
                err = str(exc)
            else:
                if not self.config.quiet:
                    self._say(f"# toggle {variant}")
        if prev is None or prev[0] != kind:
            _core.torture_set_kind(handle, kind)
            if len(self.config.locks) > 1 and not self.config.quiet:
                self._say(f"# lock {kind}")
        return err

    # -- the run --------------------------------------------------------------------------

    def run(self) -> Result:
        import pvpatch
        from . import locks  # installs the lock group's transition
        c = self.config
        configs = c.configs()
        _core.lock_futex_check()
        tune_before = _core.lock_tune()
        _core.lock_tune(pv_spin=c.pv_spin, rescue=c.rescue)
        variant_before = pvpatch.current()["lock"]
        auto_handle, auto_final = None, {}
        auto_events: list = []
        auto_reported = 0
        stats0 = _core.lock_stats()
        switches0 = locks.switches()["completed"]
        reasons: list[str] = []
        switch_failures: list[str] = []
        intervals: list[Interval] = []
        segments: list[Segment] = []
        counts: dict[str, tuple[int, float]] = {}

        try:
            handle = _core.torture_start(c.writers, c.hold_ns, configs[0][0])
        except BaseException:
            _core.lock_tune(pv_spin=tune_before[0], rescue=tune_before[1])
            raise
        dumps: list[list[str]] = []
        # Per-lock statistics: the core counts per writer, whatever lock it is on, and all
        # writers move to the next lock together.  Each lock's counts are the writers' counts
        # accumulated over the stretches it ran; writes made while the writers move between two
        # locks (a few, during _enter) are counted for neither.
        nw = c.writers
        lock_acc = {k: ([0] * nw, [0] * nw) for k in c.locks}
        lock_base = ([0] * nw, [0] * nw)  # the counters when the current lock's stretch began
        lock_now = [configs[0][0]]
        lock_prev_total = {k: 0 for k in c.locks}

        def per_lock(writes, fails) -> dict[str, tuple[list[int], list[int]]]:
            out = {}
            for k, (aw, af) in lock_acc.items():
                if k == lock_now[0]:
                    out[k] = ([a + w - b for a, w, b in zip(aw, writes, lock_base[0])],
                              [a + f - b for a, f, b in zip(af, fails, lock_base[1])])
                else:
                    out[k] = (aw, af)
            return out

        def stat_lines(t: float, writes, fails, mode: str) -> None:
            lost = _core.lock_stats()["late_wakeups"] - stats0["late_wakeups"]
            for k, (w, f) in per_lock(writes, fails).items():
                total = sum(w)
                self._say(format_line(total, max(w), min(w), sum(f), lock=k))
                intervals.append(Interval(t, total, max(w), min(w), sum(f), mode,
                                          total - lock_prev_total[k], lost, lock=k))
                lock_prev_total[k] = total

        def on_stall(lines: list[str]) -> None:
            dumps.append(lines)
            for ln in lines:
                self._say(ln)

        from .locks import grace_timeout
        dog = Watchdog(handle, c.stall_timeout, 2 * grace_timeout + 5.0, on_stall,
                       self.hard_exit_on_hang)
        dog.end_line = params_line(c, "End of test: FAILURE")
        try:
            t0 = time.monotonic()
            err = self._enter(handle, configs[0], None)
            if err:
                switch_failures.append(err)
            ci = 0
            seg_t0, seg_w0 = time.monotonic(), sum(_core.torture_read(handle)[0])
            last_variant = pvpatch.current()["lock"]  # before auto's worker can switch it
            if c.mode == "auto":
                # The worker thread appends each switch; the loop below reports them.
                auto_handle = pvpatch.auto(c.hints_path, on_event=auto_events.append)
            dog.start()
            gaps = ProgressGaps(c.writers, t0)
            end = t0 + c.duration
            next_stat = t0 + c.stat_interval
            next_rotate = t0 + c.toggle_every if len(configs) > 1 else float("inf")

            def cur_name() -> str:
                # What runs, not what was asked for: a switch may have stopped at hybrid.
                kind = configs[ci][0]
                return f"pvpatch {pvpatch.current()['lock']}" if kind == "pvpatch" else kind

            while not dog.stalled.is_set():
                dog.beat()
                now = time.monotonic()
                gaps.sample(now, _core.torture_read(handle)[0])
                if now >= end:
                    break
                if c.mode == "auto":  # the variant is host hints' business: report changes
                    while auto_reported < len(auto_events):
                        ev = auto_events[auto_reported]
                        auto_reported += 1
                        lat = ev.latency_s
                        # The first observation finds a page published before we started:
                        # its age is not a latency.
                        when = ("initial state" if auto_reported == 1 else None if lat is None
                                else f"publication to switch complete {lat * 1e3:.2f} ms")
                        self._say(f"# hints: {ev.reason} -> lock {ev.variants.get('lock')}"
                                  + ("" if ev.ok else f" FAILED: {ev.error}")
                                  + (f" ({when})" if when else ""))
                    v = pvpatch.current()["lock"]
                    if v != last_variant:
                        w = sum(_core.torture_read(handle)[0])
                        segments.append(Segment(seg_t0 - t0, now - t0,
                                                f"pvpatch {last_variant}", w - seg_w0))
                        seg_t0, seg_w0, last_variant = now, w, v
                        self._say(f"# toggle {v}")
                if now >= next_stat:
                    writes, fails = _core.torture_read(handle)
                    stat_lines(round(now - t0, 3), writes, fails, cur_name())
                    next_stat += c.stat_interval
                if now >= next_rotate:
                    w = sum(_core.torture_read(handle)[0])
                    segments.append(Segment(seg_t0 - t0, now - t0, cur_name(), w - seg_w0))
                    prev = configs[ci]
                    ci = (ci + 1) % len(configs)
                    moving = configs[ci][0] != prev[0]
                    if moving:  # close the stretch of the lock the writers leave
                        writes, fails = _core.torture_read(handle)
                        for acc, cur, base in zip(lock_acc[prev[0]], (writes, fails), lock_base):
                            acc[:] = [a + x - b for a, x, b in zip(acc, cur, base)]
                    err = self._enter(handle, configs[ci], prev)
                    if moving:
                        lock_base = _core.torture_read(handle)
                        lock_now[0] = configs[ci][0]
                    if err:
                        switch_failures.append(err)
                        self._say(f"# switch incomplete: {err}")
                    seg_t0, seg_w0 = time.monotonic(), sum(_core.torture_read(handle)[0])
                    next_rotate = seg_t0 + c.toggle_every
                time.sleep(max(0.0, min(next_stat, next_rotate, end, now + GAP_SAMPLE_S)
                               - time.monotonic()))
            now = time.monotonic()
            writes, fails = _core.torture_read(handle)
            w = sum(writes)
            segments.append(Segment(seg_t0 - t0, now - t0, cur_name(), w - seg_w0))
            if not intervals or intervals[-1].t < round(now - t0, 3):  # the closing line
                stat_lines(round(now - t0, 3), writes, fails, cur_name())
        finally:
            dog.stop()
            if auto_handle is not None:
                auto_final = auto_handle.health()
                auto_handle.stop()
            # Writers asleep on a lost wake-up come back after the rescue timeout.
            stop = _core.torture_stop(handle, max(10.0, 2 * (c.rescue or 2.0)))
            try:
                if pvpatch.current()["lock"] != variant_before:
                    pvpatch.runtime_patch({"lock": variant_before})
            except PvpatchError as exc:
                reasons.append(f"could not restore the lock variant: {exc}")
            _core.lock_tune(pv_spin=tune_before[0], rescue=tune_before[1])

        writes, fails = _core.torture_read(handle)
        stats1 = _core.lock_stats()
        stats = {k: stats1[k] - stats0.get(k, 0) for k in stats1}
        total, fail = sum(writes), sum(fails)
        lost_updates = {k: w - ctr for k, (w, ctr) in stop["kinds"].items() if w != ctr}
        for s in segments:
            n, secs = counts.get(s.config, (0, 0.0))
            counts[s.config] = (n + s.writes, secs + (s.t1 - s.t0))
        rates = {k: n / secs for k, (n, secs) in counts.items() if secs > 0}
        ratios = {f"{a} / {b}": rates[a] / rates[b]
                  for a, b in ratio_pairs(rates, c.writers, os.cpu_count() or 1) if rates[b] > 0}
        if fail:
            reasons.append(f"{fail} mutual-exclusion violation(s) detected in critical sections")
        if lost_updates:
            reasons.append("lost updates (two owners at once): " + ", ".join(
                f"{k} {v}" for k, v in lost_updates.items()))
        if stats["late_wakeups"]:
            reasons.append(f"{stats['late_wakeups']} wake-up(s) lost (a sleeper was rescued "
                           f"by its timeout with its condition already true)")
        if stats["futex_errors"]:
            try:
                _core.lock_futex_check()
                why = "?"
            except OSError as exc:
                why = f"{exc.filename}: {exc.strerror}"
            reasons.append(f"{stats['futex_errors']} futex call(s) failed ({why}); the waiters "
                           f"spun instead")
        stalled = dog.stalled.is_set()
        if stalled:
            reasons.append(f"stall: no acquisition for {c.stall_timeout:g} s")
        if not stop["joined"]:
            reasons.append(f"writer(s) {stop['stuck']} did not stop")
        switches = locks.switches()["completed"] - switches0
        all_gaps = gaps.gaps()
        return Result(config=asdict(c) | {"configs": [config_name(x) for x in configs]},
                      intervals=intervals, segments=segments, switches=switches,
                      switch_failures=switch_failures, fail=fail, total=total,
                      lost_wakeups=stats["late_wakeups"], lost_updates=lost_updates,
                      stalled=stalled, stuck_writers=stop["stuck"], rates=rates, ratios=ratios,
                      lock_stats={k: v for k, v in stats.items() if v}, success=not reasons,
                      reasons=reasons, auto_switches=[e.to_json() for e in auto_events],
                      auto_final=auto_final,
                      progress_gaps=[asdict(g) for g in all_gaps[:20]],
                      progress_gaps_total=len(all_gaps))


def report(result: Result, say: Callable[[str], None], config: Config | None = None) -> None:
    """The end of the run: per-configuration rates, each ratio once, the verdict, and the
    kernel's end line (given the run's Config; without it, the bare verdict)."""
    for name, rate in result.rates.items():
        secs = sum(s.t1 - s.t0 for s in result.segments if s.config == name)
        n = sum(s.writes for s in result.segments if s.config == name)
        say(f"# {name}: {n:,} writes in {secs:.1f} s ({rate:,.0f}/s)")
    for pair, r in result.ratios.items():
        say(f"# ratio {pair}: {format_ratio(r)}")
    if result.switches or result.switch_failures:
        say(f"# switches: {result.switches} completed, {len(result.switch_failures)} stopped "
            f"at hybrid")
    report_gaps(result.progress_gaps, result.progress_gaps_total, say)
    for r in result.reasons:
        say(f"# FAILURE: {r}")
    tag = f"End of test: {'SUCCESS' if result.success else 'FAILURE'}"
    say(params_line(config, tag) if config is not None else tag)


def write_json(result: Result, path: str) -> None:
    with open(path, "w") as f:
        json.dump(result.as_json(), f, indent=1)
        f.write("\n")


PLOT_FORMATS = (".png", ".svg")


def plot(result: Result, path: str) -> None:
    """Acquisitions per second: one series per configuration (a point per stretch it ran, at
    the stretch's middle), the stretches shaded in the series' colour, the legend outside the
    axes so that it covers no data.  The format follows the file name: .png or .svg."""
    from .extras import require
    matplotlib = require("matplotlib", "torture --plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not path.lower().endswith(PLOT_FORMATS):
        raise TortureError(f"--plot {path}: give a file name ending in .png or .svg")
    names = list(dict.fromkeys(s.config for s in result.segments))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour = {n: colours[i % len(colours)] for i, n in enumerate(names)}
    fig, ax = plt.subplots(figsize=(11, 4.5))
    for s in result.segments:  # shading: which configuration ran when (no legend entry)
        if s.t1 > s.t0:
            ax.axvspan(s.t0, s.t1, color=colour[s.config], alpha=0.12, lw=0)
    for n in names:
        segs = [s for s in result.segments if s.config == n and s.t1 > s.t0]
        if segs:
            ax.plot([(s.t0 + s.t1) / 2 for s in segs],
                    [max(s.writes / (s.t1 - s.t0), 1.0) for s in segs],
                    color=colour[n], marker="o", ms=3, lw=1.2,
                    label=f"{n} ({result.rates.get(n, 0):,.0f}/s)")
    ax.set_yscale("log")
    ax.set_xlabel("seconds")
    ax.set_ylabel("acquisitions per second")
    c = result.config
    ax.set_title(f"pvpatch torture: lock {', '.join(c['locks'])}, mode {c['mode']}, "
                 f"{c['writers']} writers on {os.cpu_count()} CPUs, hold {c['hold_ns']} ns: "
                 f"{'SUCCESS' if result.success else 'FAILURE'}", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, fontsize=8,
              title="configuration (mean rate)", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
