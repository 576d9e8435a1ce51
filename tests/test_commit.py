"""The commit rule: no Python exception at any point of runtime_patch leaves the registry's
record and the code disagreeing.  A SIGALRM handler raises at random moments of thousands of
calls (its own exception, KeyboardInterrupt, or a re-entering runtime_patch); afterwards every
site holds what current() says, the slots agree, and for the lock group writers lose no
wake-up."""
import collections
import ctypes
import random
import signal
import time
import traceback

import pytest

import pvpatch
import pvpatch.locks as locks
from pvpatch import _core, patcher

SELFTEST = ("pv", "alt", "native")
LOCK = ("pv", "native", "hybrid", "pv", "hybrid", "native")


class Boom(Exception):
    pass


def _raiser(kind, group, variants):
    if kind == "boom":
        def raise_it():
            raise Boom
    elif kind == "keyboard":
        def raise_it():
            raise KeyboardInterrupt
    else:  # re-enter: a handler that switches the group itself
        def raise_it():
            try:
                pvpatch.runtime_patch({group: random.choice(variants)})
            except pvpatch.PvpatchError:
                pass  # refused inside runtime_patch; the place it interrupted is what counts
            raise Boom
    return raise_it


def call_us(group, variants, n=30):
    """Median duration of one runtime_patch of `group`, in microseconds: the storm's timer
    range follows it, so that the alarms land inside the calls however fast they are."""
    ts = []
    for i in range(n):
        t0 = time.perf_counter()
        pvpatch.runtime_patch({group: variants[i % len(variants)]})
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[n // 2] * 1e6


def storm(group, variants, n, kind, max_delay_us=None):
    """n runtime_patch calls, each with a SIGALRM armed to go off somewhere inside it (within
    max_delay_us, by default 1.5 times a call's median duration).
    Returns (calls interrupted, {patcher.py line where it landed: count})."""
    if max_delay_us is None:
        max_delay_us = max(20.0, 1.5 * call_us(group, variants))
    armed = [False]
    raise_it = _raiser(kind, group, variants)

    def handler(sig, frame):
        if armed[0]:
            armed[0] = False
            raise_it()

    old = signal.signal(signal.SIGALRM, handler)
    hits, where = 0, collections.Counter()
    rng = random.Random(8)
    try:
        for i in range(n):
            try:
                armed[0] = True
                signal.setitimer(signal.ITIMER_REAL, rng.uniform(1, max_delay_us) * 1e-6)
                try:
                    pvpatch.runtime_patch({group: variants[i % len(variants)]})
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                    armed[0] = False
            except (Boom, KeyboardInterrupt, pvpatch.PvpatchError) as exc:
                hits += 1
                for fr in reversed(traceback.extract_tb(exc.__traceback__)):
                    if fr.filename.endswith(("patcher.py", "locks.py")):
                        where[f"{fr.filename.rsplit('/', 1)[1]}:{fr.lineno}"] += 1
                        break
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return hits, where


def assert_in_step(group):
    cur = pvpatch.current()[group]
    for s in pvpatch.registry.sites(group):
        assert patcher.site_bytes(s) == s.renderings[cur], f"{s.name}: not {cur}"
    for m in pvpatch.registry.modules:
        for g in m.desc.groups:
            if g.name == group:
                vi = g.variants.index(cur)
                for op in g.ops:
                    if op.slot:
                        assert ctypes.c_void_p.from_address(op.slot).value == op.impls[vi].fn
    return cur


@pytest.mark.parametrize("kind", ["boom", "keyboard", "reenter"])
def test_selftest_group_survives_exceptions_anywhere(selftest_native, kind):
    hits, where = storm("selftest", SELFTEST, 3000, kind)
    assert hits > 300, f"only {hits} calls were interrupted: proves little"
    assert len(where) >= 5, f"interrupted at too few places: {where}"
    cur = assert_in_step("selftest")
    # And the record is usable: switching to each variant really writes it.
    for v in SELFTEST:
        pvpatch.runtime_patch({"selftest": v})
        assert _core.selftest_call(0) == {"native": 0x1001, "pv": 0x1002, "alt": 0x1003}[v]
    assert cur in SELFTEST


def test_reentering_runtime_patch_is_refused_and_changes_nothing(selftest_native):
    seen = []

    def handler(sig, frame):
        try:
            pvpatch.runtime_patch({"selftest": "alt"})
            seen.append("ran")
        except pvpatch.PvpatchError as exc:
            seen.append(str(exc))

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        with patcher._lock:  # as if runtime_patch were running on this thread
            signal.raise_signal(signal.SIGUSR1)
            for _ in range(100):
                if seen:
                    break
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert seen and "already inside runtime_patch" in seen[0]
    assert pvpatch.current()["selftest"] == "native"


@pytest.fixture
def lock_native():
    tune = _core.lock_tune()
    yield
    locks.install()
    pvpatch.runtime_patch({"lock": "native"})
    assert locks.mode() == "native"
    _core.lock_tune(pv_spin=tune[0], rescue=tune[1])


@pytest.mark.parametrize("kind", ["boom", "keyboard"])
def test_lock_group_survives_exceptions_anywhere_and_loses_no_wakeup(lock_native, kind):
    _core.lock_tune(pv_spin=8, rescue=0.3)
    s0 = _core.lock_stats()
    h = _core.torture_start(8, 1000, "pvpatch")
    try:
        hits, where = storm("lock", LOCK, 600, kind)
        # The mode may lag behind an interrupted switch; naming the group again finishes it.
        cur = assert_in_step("lock")
        pvpatch.runtime_patch({"lock": cur})
        assert locks.mode() == cur
        # A torture run on top of whatever the storm left: every switch still complete.
        deadline = time.monotonic() + 1.5
        i = 0
        while time.monotonic() < deadline:
            pvpatch.runtime_patch({"lock": LOCK[i % len(LOCK)]})
            i += 1
            time.sleep(0.002)
    finally:
        res = _core.torture_stop(h, 10.0)
    writes, fails = _core.torture_read(h)
    s1 = _core.lock_stats()
    assert hits > 60, f"only {hits} calls were interrupted"
    assert len(where) >= 4, where
    assert res["joined"], f"writers {res['stuck']} never came back"
    assert sum(fails) == 0
    assert s1["late_wakeups"] - s0["late_wakeups"] == 0, "a wake-up was lost"
    assert s1["head_sleep"] - s0["head_sleep"] > 0, "no head slept: proves nothing"
    assert_in_step("lock")


def test_registration_interrupted_anywhere_is_recorded_iff_it_wrote():
    """register_desc under the same storm: a module is in the registry exactly when its sites
    were patched, and then they hold its group's variant."""
    from pvpatch import gen
    armed = [False]

    def handler(sig, frame):
        if armed[0]:
            armed[0] = False
            raise Boom

    old = signal.signal(signal.SIGALRM, handler)
    rng = random.Random(3)
    outcomes = collections.Counter()
    try:
        for i in range(150):
            g = gen.generate(40, group="regstorm", name=f"regstorm-{i}")
            try:
                armed[0] = True
                signal.setitimer(signal.ITIMER_REAL, rng.uniform(1, 1500) * 1e-6)
                try:
                    pvpatch.register_desc(g.desc, text=g.text)
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                    armed[0] = False
            except Boom:
                pass
            registered = any(m.name == g.desc.name for m in pvpatch.registry.modules)
            outcomes[registered] += 1
            if registered:
                cur = pvpatch.current()["regstorm"]
                m = pvpatch.registry.module(g.desc.name)
                assert all(patcher.site_bytes(s) == s.renderings[cur] for s in m.sites)
                assert g.call(5) == {"native": 0x1001, "pv": 0x1002, "alt": 0x1003}[cur]
            else:
                assert all(_core.read(r.addr, r.length) == x for r, x in
                           zip(g.desc.runtime, [s for s in _defaults(g)])), "written, unrecorded"
            if i % 10 == 0 and "regstorm" in pvpatch.registry.groups:
                pvpatch.runtime_patch({"regstorm": SELFTEST[i % 3]})
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert outcomes[True] > 10 and outcomes[False] > 10, outcomes


def _defaults(g):
    from pvpatch import x86
    slot = g.desc.groups[0].ops[0].slot
    return [x86.default_site(r.addr, slot, r.length) for r in g.desc.runtime]


def test_mode_never_becomes_pv_over_inline_unlocks(lock_native):
    """The check reads the code: a transition whose first batch did not happen (here: an
    apply that writes nothing) stops before the mode store."""
    assert pvpatch.current()["lock"] == "native" and locks.mode() == "native"
    with pytest.raises(locks.UnlockSitesNotKicking, match=r"unlock site .* holds (2e)*c60700"):
        locks.transition("native", "pv", lambda variant: None)
    assert locks.mode() == "native"
    pvpatch.runtime_patch({"lock": "pv"})  # the real path goes through
    assert locks.mode() == "pv"
