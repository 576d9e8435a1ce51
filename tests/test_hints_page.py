"""The page for real: files in tmp_path, futexes across processes, bad pages, read-only guests."""
from __future__ import annotations

import errno
import logging
import os
import signal
import stat
import subprocess
import textwrap
import threading
import time

import pytest

from pvpatch.errors import SyscallError
from pvpatch.hints import abi, shm
from pvpatch.hints.publisher import Publisher, PublisherBusy
from pvpatch.hints.reader import HintReader
from pvpatch.hints.subscriber import Notifier

from hints_util import PY, Proc, wait_until

M = {"online_cpus": 2, "runnable": 0, "sources": abi.SOURCE_PROC_STAT}


@pytest.fixture
def page(tmp_path):
    pub = Publisher(str(tmp_path / "hints"), interval_s=0.1).open()
    yield pub
    pub.close()


def test_publish_and_read_back(page):
    assert page.publish(abi.HINT_REALTIME, M, abi.REASON_SIMULATED)  # first: moved
    assert not page.publish(abi.HINT_REALTIME, M, abi.REASON_SIMULATED)  # heartbeat only
    with HintReader(page.path) as r:
        st = r.read()
        assert st.usable, st.problem
        assert st.active_hints == abi.HINT_REALTIME
        assert st.page.publications == 2 and st.page.seqcount % 2 == 0
        g = st.page.generation
        assert page.publish(0, M, abi.REASON_RUNNABLE)
        st = r.read()
        assert st.page.generation == g + 1 and st.active_hints == 0
        assert st.page.ever_hints == abi.HINT_REALTIME  # the union remembers


def test_page_file_is_0644_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        with Publisher(str(tmp_path / "h")) as p:
            assert stat.S_IMODE(os.stat(p.path).st_mode) == 0o644
            assert os.stat(p.path).st_size == abi.FILE_SIZE
    finally:
        os.umask(old)


def test_second_publisher_refuses_and_names_the_holder(page):
    page.publish(0, M, abi.REASON_NONE)
    before = open(page.path, "rb").read()
    with pytest.raises(PublisherBusy) as ei:
        Publisher(page.path).open()
    assert ei.value.pid == os.getpid() and f"pid {os.getpid()}" in str(ei.value)
    assert open(page.path, "rb").read() == before  # refused: changed nothing


def test_publisher_refuses_symlink_and_bad_interval(tmp_path):
    os.symlink(tmp_path / "elsewhere", tmp_path / "link")
    with pytest.raises(Exception, match="link"):
        Publisher(str(tmp_path / "link")).open()
    assert not (tmp_path / "elsewhere").exists()
    with pytest.raises(Exception, match="interval"):
        Publisher(str(tmp_path / "x"), interval_s=0)


def test_futex_wakes_another_process(page):
    """A child sleeps on the generation (read-only mapping); a publication wakes it."""
    page.publish(0, M, abi.REASON_NONE)
    g = page.page.generation
    child = Proc([PY, "-c", textwrap.dedent(f"""
        from pvpatch.hints.reader import HintReader
        r = HintReader({page.path!r})
        st = r.read()
        assert st.page.generation == {g}
        print("waiting", flush=True)
        print("result", r.wait({g}, 20.0), r.read().page.generation, flush=True)
        """)])
    try:
        child.wait_line("waiting")
        time.sleep(0.2)  # let it reach FUTEX_WAIT (if not, it sees EAGAIN: also correct)
        page.publish(abi.HINT_REALTIME, M, abi.REASON_SIMULATED)
        line = child.wait_line("result", timeout=10)
        how, gen = line.split()[1:]
        assert how in ("woken", "changed") and int(gen) == g + 1
        assert child.wait() == 0
    finally:
        child.close()


def test_futex_wait_times_out_and_sees_changes(page):
    page.publish(0, M, abi.REASON_NONE)
    with HintReader(page.path) as r:
        g = r.read().page.generation
        assert r.wait(g, 0.05) == "timeout"
        assert r.wait(g + 1, 5.0) == "changed"


def test_guest_cannot_write_the_page(page):
    """O_RDONLY + PROT_READ: a store faults, mprotect and write() are refused - even for root."""
    page.publish(abi.HINT_REALTIME, M, abi.REASON_SIMULATED)
    before = open(page.path, "rb").read()
    with HintReader(page.path) as r:
        r.read()
        with pytest.raises(SyscallError) as ei:
            r.map.mprotect(shm.PROT_READ | shm.PROT_WRITE)
        assert ei.value.errno == errno.EACCES and ei.value.syscall == "mprotect"
        with pytest.raises(OSError) as ei:
            os.write(r.fd, b"x")
        assert ei.value.errno == errno.EBADF
    # A store through the guest's mapping: the process dies of SIGSEGV, the page is untouched.
    child = subprocess.run([PY, "-c", textwrap.dedent(f"""
        import ctypes
        from pvpatch.hints.reader import HintReader
        r = HintReader({page.path!r}); r.read()
        print("mapped", flush=True)
        ctypes.c_uint32.from_address(r.map.generation_addr).value = 12345
        print("wrote", flush=True)
        """)], capture_output=True, text=True, timeout=30)
    assert child.returncode == -signal.SIGSEGV, (child.returncode, child.stderr[-2000:])
    assert "mapped" in child.stdout and "wrote" not in child.stdout
    assert open(page.path, "rb").read() == before


def _write(path, data: bytes):
    with open(path, "wb") as f:
        f.write(data)


def _good_bytes(tmp_path) -> bytes:
    with Publisher(str(tmp_path / "model"), interval_s=0.1) as p:
        p.publish(abi.HINT_REALTIME, M, abi.REASON_SIMULATED)
        return open(p.path, "rb").read()


def bad_pages(tmp_path):
    good = _good_bytes(tmp_path)
    wrong_version = bytearray(good)
    wrong_version[4:6] = (2).to_bytes(2, "little")
    odd = bytearray(good)
    odd[12:16] = (7).to_bytes(4, "little")
    forged = bytearray(good)
    forged[104:108] = (50000).to_bytes(4, "little")  # steal 500 %
    return {
        "garbage": (os.urandom(abi.FILE_SIZE), "magic"),
        "zeros": (bytes(abi.FILE_SIZE), "magic"),
        "truncated": (good[:60], "truncated"),
        "empty": (b"", "truncated"),
        "wrong version": (bytes(wrong_version), "version"),
        "odd seqcount": (bytes(odd), "seqcount"),
        "out of range": (bytes(forged), "steal"),
    }


def test_bad_pages_read_as_no_hint(tmp_path):
    for name, (data, fragment) in bad_pages(tmp_path).items():
        path = tmp_path / name.replace(" ", "_")
        _write(path, data)
        with HintReader(str(path)) as r:
            st = r.read()
        assert not st.valid and not st.usable, name
        assert st.active_hints == 0
        assert fragment in st.problem, (name, st.problem)


def test_missing_page_and_directory(tmp_path):
    with HintReader(str(tmp_path / "nope")) as r:
        st = r.read()
    assert not st.usable and "missing" in st.problem
    with HintReader(str(tmp_path)) as r:
        assert not r.read().usable


def test_notifier_warns_once_and_recovers(tmp_path, caplog):
    """A garbage page -> no hints, one warning over many rounds; a publisher taking the file over
    wakes the notifier (it sleeps on the raw generation word) and hints come back."""
    path = str(tmp_path / "hints")
    _write(path, os.urandom(abi.FILE_SIZE))
    seen = []
    n = Notifier(path, seen.append, poll_s=0.02)
    with caplog.at_level(logging.WARNING, logger="pvpatch.hints"):
        n.start()
        try:
            wait_until(lambda: n.observations >= 10, 10, "ten observations of a garbage page")
            assert all(not s.usable for s in seen)
            warnings = [r for r in caplog.records if "safe default" in r.getMessage()]
            assert len(warnings) == 1 and "magic" in warnings[0].getMessage()
            with Publisher(path, interval_s=0.1) as p:
                p.publish(abi.HINT_REALTIME, M, abi.REASON_SIMULATED)
                wait_until(lambda: seen[-1].usable, 10, "hints after the publisher started")
                assert seen[-1].active_hints == abi.HINT_REALTIME
                assert any("usable again" in r.getMessage() for r in caplog.records)
        finally:
            n.stop()


def test_notifier_follows_flips_and_reaches_stale(page):
    """Flips are reported; when heartbeats stop the page turns stale within the bound."""
    seen = []
    lock = threading.Lock()

    def cb(st):
        with lock:
            seen.append(st)
    page.publish(0, M, abi.REASON_NONE)
    n = Notifier(page.path, cb).start()
    try:
        for i in range(5):
            hints = abi.HINT_REALTIME if i % 2 == 0 else 0
            page.publish(hints, M, abi.REASON_SIMULATED)
            g = page.page.generation
            wait_until(lambda: any(s.valid and s.page.generation == g for s in list(seen)), 10,
                       f"generation {g}")
        t = time.monotonic()
        wait_until(lambda: seen[-1].stale, 10, "staleness")  # no heartbeat any more
        waited = time.monotonic() - t
        assert waited >= 0.5  # not before the 1 s bound (interval 0.1 s -> 1 s minimum)
        assert seen[-1].active_hints == 0 and "stale" in seen[-1].problem
    finally:
        n.stop()


def test_torn_write_is_never_observed(page):
    """A reader hammering the page while the publisher flips it only sees whole snapshots: the
    hints and the reason always agree (REALTIME <-> simulated, none <-> runnable)."""
    page.publish(0, dict(M, runnable=7), abi.REASON_RUNNABLE)
    stop = threading.Event()
    bad = []

    def read_loop():
        with HintReader(page.path) as r:
            while not stop.is_set():
                st = r.read()
                if not st.valid:
                    bad.append(st.problem)
                    continue
                p = st.page
                pair = (p.active_hints, p.reason, p.runnable)
                if pair not in ((1, abi.REASON_SIMULATED, 1), (0, abi.REASON_RUNNABLE, 7)):
                    bad.append(pair)
    t = threading.Thread(target=read_loop)
    t.start()
    try:
        end = time.monotonic() + 1.0
        i = 0
        while time.monotonic() < end:
            i += 1
            if i % 2:
                page.publish(abi.HINT_REALTIME, dict(M, runnable=1), abi.REASON_SIMULATED)
            else:
                page.publish(0, dict(M, runnable=7), abi.REASON_RUNNABLE)
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive()
    assert not bad, bad[:5]
