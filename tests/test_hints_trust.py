"""Who can write the page: hostd refuses names others made, guests refuse pages others could
have written, readers cannot block the publisher, and hostd survives what is done to its page.

The other-user cases drop to `nobody` in a forked child (hints_util.UserChild), which needs root;
without root they skip, saying so."""
from __future__ import annotations

import fcntl
import os
import shutil
import signal
import stat
import tempfile

import pytest

from pvpatch.hints import abi, shm
from pvpatch.hints.publisher import Publisher, PublisherBusy, PublisherError
from pvpatch.hints.reader import HintReader

from hints_util import NOBODY, UserChild, as_user, cli, hostd, is_root, wait_until

needs_root = pytest.mark.skipif(not is_root(), reason="dropping to another user (nobody) "
                                                      "needs root")
M = {"online_cpus": 2, "runnable": 0, "sources": abi.SOURCE_PROC_STAT}


@pytest.fixture
def shared_dir():
    """A directory under /tmp that `nobody` can reach (pytest's tmp_path is root's, 0700)."""
    d = tempfile.mkdtemp(prefix="pvpatch-trust-", dir="/tmp")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def valid_page_bytes(tmp, hints=abi.HINT_REALTIME) -> bytes:
    """A valid, fresh page (interval 10 s: fresh for 30 s), as hostd would write it."""
    with Publisher(os.path.join(tmp, "model"), interval_s=10.0) as p:
        p.publish(hints, M, abi.REASON_SIMULATED)
        return open(p.path, "rb").read()


def snapshot(path) -> tuple:
    st = os.lstat(path)
    return (st.st_uid, stat.S_IMODE(st.st_mode), st.st_nlink, st.st_ino,
            open(path, "rb").read() if not stat.S_ISLNK(st.st_mode) else os.readlink(path))


# --- hostd never adopts, chmods or writes what it did not create ------------------------------

@needs_root
def test_hostd_refuses_a_page_another_user_created(shared_dir):
    """The squat from the report: nobody pre-creates the page, mode 666.  hostd refuses it,
    naming the owner, and leaves it exactly as it was (mode, content); no lock is taken."""
    path = os.path.join(shared_dir, "hints")
    os.chmod(shared_dir, 0o777)  # let nobody create the name ...

    def squat():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o666)
        os.fchmod(fd, 0o666)
        os.write(fd, b"squatted")
        os.close(fd)
    assert as_user(squat).startswith("ok"), "nobody could not create the page"
    os.chmod(shared_dir, 0o755)  # ... then make the directory safe again: only the file is bad
    before = snapshot(path)
    r = cli("hostd", "--path", path, "--duration", "1", "--interval", "0.1")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert f"owned by uid {NOBODY}" in r.stderr and "left untouched" in r.stderr, r.stderr
    assert snapshot(path) == before
    with pytest.raises(PublisherError, match=f"uid {NOBODY}"):
        Publisher(path).open()
    assert snapshot(path) == before


def test_hostd_refuses_hard_links_and_symlinks_and_leaves_targets_alone(tmp_path):
    target = tmp_path / "precious"
    target.write_bytes(b"keep me")
    os.chmod(target, 0o600)
    before = snapshot(target)
    os.link(target, tmp_path / "hard")
    os.symlink(target, tmp_path / "soft")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    for name, frag in (("hard", "2 links"), ("soft", "symbolic link"),
                       ("dangling", "symbolic link")):
        r = cli("hostd", "--path", tmp_path / name, "--duration", "1")
        assert r.returncode == 2 and frag in r.stderr, (name, r.stderr)
    assert snapshot(target)[:2] + snapshot(target)[3:] == before[:2] + before[3:]
    assert snapshot(target)[2] == 2  # the hard link is still there, untouched
    assert not (tmp_path / "nowhere").exists()
    # The lock is held to the same rule: a symlink there is refused, its target untouched.
    os.symlink(target, tmp_path / "page.lock")
    r = cli("hostd", "--path", tmp_path / "page", "--duration", "1")
    assert r.returncode == 2 and "lock" in r.stderr, r.stderr
    assert open(target, "rb").read() == b"keep me" and not (tmp_path / "page").exists()


@needs_root
def test_hostd_refuses_a_directory_others_can_write(shared_dir):
    os.chmod(shared_dir, 0o1777)  # like /dev/shm: anyone can create names
    path = os.path.join(shared_dir, "hints")
    r = cli("hostd", "--path", path, "--duration", "1")
    assert r.returncode == 2 and "writable by others" in r.stderr, r.stderr
    assert os.listdir(shared_dir) == []
    os.chmod(shared_dir, 0o755)
    os.chown(shared_dir, NOBODY, NOBODY)  # owned by someone who could rename the page away
    r = cli("hostd", "--path", path, "--duration", "1")
    assert r.returncode == 2 and f"owned by uid {NOBODY}" in r.stderr, r.stderr
    assert os.listdir(shared_dir) == []


@pytest.mark.parametrize("umask", [0, 0o077])
def test_new_page_directory_and_lock_have_safe_modes_whatever_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        with Publisher(str(tmp_path / "run" / "hints")) as p:
            p.publish(0, M, abi.REASON_NONE)
            assert stat.S_IMODE(os.stat(tmp_path / "run").st_mode) == 0o755
            assert stat.S_IMODE(os.stat(p.path).st_mode) == 0o644
            assert stat.S_IMODE(os.stat(p.lock_path).st_mode) == 0o600
            assert os.stat(p.path).st_nlink == 1
            assert not [n for n in os.listdir(tmp_path / "run") if n.endswith(".new")]
    finally:
        os.umask(old)


# --- exclusion that readers cannot block ------------------------------------------------------

@needs_root
def test_readers_holding_every_lock_they_can_take_do_not_stop_hostd(shared_dir):
    """nobody opens the page and takes every lock it can (flock exclusive and shared, a POSIX
    read lock); it cannot even open the lock file.  hostd starts over it and restarts under it."""
    path = os.path.join(shared_dir, "hints")
    h = hostd(path, "--interval", "0.1", "--simulate", "0:realtime")
    try:
        h.wait_line("publishing")

        def hold():
            fd = os.open(path, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fd2 = os.open(path, os.O_RDONLY)
            fcntl.lockf(fd2, fcntl.LOCK_SH | fcntl.LOCK_NB)
            try:
                os.open(path + ".lock", os.O_RDONLY)
                return "opened the lock"
            except PermissionError:
                return "locks held; lock file closed to us"
        holder = UserChild(hold, hold=True)
        try:
            assert holder.wait_result() == "ok locks held; lock file closed to us"
            h.kill(signal.SIGTERM)
            assert h.wait(10) == 0
            h.close()
            h = hostd(path, "--interval", "0.1", "--simulate", "0:realtime")
            h.wait_line("hints=realtime")  # the restart is not refused
            r = cli("hostd", "--path", path, "--duration", "1")
            assert r.returncode == 2 and f"pid {h.pid} holds its lock" in r.stderr, r.stderr
            assert f"pid {holder.pid}" not in r.stderr
        finally:
            assert holder.release() == 0
    finally:
        h.kill(signal.SIGTERM)
        h.close()


def test_busy_error_names_the_real_holder(tmp_path):
    """The holder is whoever holds the lock (/proc/locks), not a pid written in the page."""
    path = str(tmp_path / "hints")
    with Publisher(path) as p:
        p.publish(0, M, abi.REASON_NONE)
    lock_path = path + ".lock"

    def take():
        fd = os.open(lock_path, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return "held"
    holder = UserChild(take, uid=os.geteuid(), hold=True)  # another process, same user
    try:
        assert holder.wait_result() == "ok held"
        with pytest.raises(PublisherBusy) as ei:
            Publisher(path).open()
        assert ei.value.pid == holder.pid and f"pid {holder.pid}" in str(ei.value)
    finally:
        holder.release()


# --- guests trust only the publisher -----------------------------------------------------------

@needs_root
def test_guests_refuse_a_page_another_user_wrote(shared_dir, tmp_path):
    """A page with valid, fresh REALTIME content that nobody wrote is untrusted: no hints, and
    the reason in one line.  Trusting that uid explicitly makes the same bytes usable."""
    data = valid_page_bytes(str(tmp_path))
    path = os.path.join(shared_dir, "forged")
    os.chmod(shared_dir, 0o777)

    def forge():
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, 0o644)
    assert as_user(forge).startswith("ok")
    with HintReader(path) as r:
        st = r.read()
    assert not st.usable and st.status == "untrusted" and st.active_hints == 0
    assert f"owned by uid {NOBODY}" in st.problem
    with HintReader(path, publisher_uid=NOBODY) as r:
        st = r.read()
    assert st.usable and st.active_hints == abi.HINT_REALTIME
    res = cli("hints", "--hints-path", path)
    assert res.returncode == 1 and "untrusted" in res.stdout.splitlines()[0], res.stdout
    res = cli("hints", "--hints-path", path, "--publisher-uid", NOBODY)
    assert res.returncode == 0, res.stdout


def test_guests_refuse_a_page_others_can_write(tmp_path):
    path = tmp_path / "hints"
    path.write_bytes(valid_page_bytes(str(tmp_path)))
    for mode in (0o666, 0o664):
        os.chmod(path, mode)
        with HintReader(str(path)) as r:
            st = r.read()
        assert st.status == "untrusted" and "writable by group or others" in st.problem
    os.chmod(path, 0o644)
    with HintReader(str(path)) as r:
        assert r.read().usable
    os.symlink(path, tmp_path / "link")
    with HintReader(str(tmp_path / "link")) as r:
        st = r.read()
    assert st.status == "untrusted" and "symbolic link" in st.problem


# --- hostd survives what is done to the page ---------------------------------------------------

def _wake(path) -> None:
    """Wake whoever sleeps on the page's generation word (any process mapping it can)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        m = shm.Mapping(fd, abi.FILE_SIZE, writable=False)
        try:
            shm.futex_wake(m.generation_addr)
        finally:
            m.close()
    finally:
        os.close(fd)


def test_hostd_survives_truncation_deletion_and_replacement(tmp_path, selftest_native):
    """Under a running hostd the page is truncated (to 64 bytes and to 0: no SIGBUS), deleted
    and replaced by someone else's file.  hostd says what happened once each time, puts its page
    back, and keeps running; a guest falls back while the page is broken and recovers."""
    from pvpatch.hints.guest import auto
    path = str(tmp_path / "hints")
    # (interval 1 s: the window in which the woken guest must see the broken page)
    h = hostd(path, "--interval", "1", "--simulate", "0:realtime")
    handle = None
    try:
        h.wait_line("hints=realtime")
        handle = auto(path, groups={"selftest": ("native", "pv")}, min_dwell_s=0)
        wait_until(lambda: handle.in_force == {"selftest": "native"}, 10, "native")
        n0 = len(handle.events)
        os.truncate(path, 64)
        _wake(path)  # the guest re-reads now, while the page is broken
        wait_until(lambda: any(e.variants == {"selftest": "pv"} and "truncated" in e.reason
                               for e in handle.events[n0:]), 10, "fallback on a truncated page")
        h.wait_line("truncated: ", timeout=10)
        wait_until(lambda: handle.in_force == {"selftest": "native"}, 10, "recovery")
        ev = handle.events[-1]
        assert ev.ok and ev.published_ns is not None
        for damage, line in ((lambda: os.truncate(path, 0), "truncated: "),
                             (lambda: os.unlink(path), "deleted: ")):
            damage()
            h.wait_line(line, timeout=10)
            with HintReader(path) as r:
                wait_until(lambda: r.read().usable, 10, f"the page back after {line}")
        assert h.p.poll() is None  # still running: no SIGBUS
        # Someone (root: the directory is root's) puts another file at the path.
        forged = tmp_path / "forged"
        (tmp_path / "m").mkdir()
        forged.write_bytes(valid_page_bytes(str(tmp_path / "m"), hints=0))
        if is_root():
            os.chown(forged, NOBODY, NOBODY)
        os.rename(forged, path)
        h.wait_line("replaced: ", timeout=10)
        with HintReader(path) as r:
            st = wait_until(lambda: (lambda s: s if s.usable else None)(r.read()), 10,
                            "hostd's page back")
        assert st.page.publisher_pid == h.pid and os.stat(path).st_uid == os.geteuid()
        wait_until(lambda: handle.in_force == {"selftest": "native"}, 10, "native at the end")
        assert h.p.poll() is None and handle.alive and handle.errors == []
        h.kill(signal.SIGTERM)
        assert h.wait(10) == 0
        said = [ln.split(": ")[1] for ln in h.drain() if ln.startswith("pvpatch hostd: ")
                and ln.split(": ")[1] in ("truncated", "deleted", "replaced", "altered")]
        assert said == ["truncated", "truncated", "deleted", "replaced"], said  # once each
    finally:
        if handle:
            handle.stop()
        h.kill(signal.SIGTERM)
        h.close()
