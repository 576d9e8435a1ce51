"""Who may write the hint page, and how a guest decides to trust one (docs/hints.md, "Trust").

The rule, from both ends:

  publisher  puts the page in a directory that only it (or root) can write, every ancestor of
             which is owned by root or by it and is not writable by others unless sticky; creates
             the page itself (never adopts, chmods or writes a file someone else made) and keeps
             its lock next to it, mode 0600, where nobody else can open it.
  guest      trusts a page only if it is owned by root, by the guest's own uid (who controls the
             guest anyway), or by the configured publisher uid, and is not writable by group or
             others.  Anything else is "untrusted": no hints, the safe default.

Mechanism only: these functions judge stat results and name what is wrong; the publisher and the
reader decide what to do about it.
"""
from __future__ import annotations

import os
import stat

from .abi import DEFAULT_DIR
DEFAULT_DIR_MODE = 0o755  # guests must be able to look the page up; only root can add names
PAGE_MODE = 0o644
LOCK_MODE = 0o600         # nobody but the publisher (and root) can open, so nobody can flock it


def trusted_uids(publisher_uid: int | None = None) -> frozenset[int]:
    """Owners whose page a guest with this effective uid accepts."""
    uids = {0, os.geteuid()}
    if publisher_uid is not None:
        uids.add(publisher_uid)
    return frozenset(uids)


def check_publisher_uid(publisher_uid) -> int | None:
    """None or a uid (int >= 0); ValueError naming the value otherwise."""
    if publisher_uid is None:
        return None
    if isinstance(publisher_uid, bool) or not isinstance(publisher_uid, int) \
            or not 0 <= publisher_uid < 2**32 - 1:
        raise ValueError(f"publisher_uid {publisher_uid!r} is not a uid (an int 0..2^32-2)")
    return publisher_uid


def _who(uid: int) -> str:
    return "root" if uid == 0 else f"uid {uid}"


def page_problem(st: os.stat_result, trusted: frozenset[int]) -> str:
    """Why a guest must not trust the page file with stat `st` ("" if it may).

    The rule's one implementation is the C agent's (pvagent_trust_problem in _core/agent.c),
    which guests without Python run too."""
    from .. import _core
    return _core.hint_trust(st.st_mode, st.st_uid, sorted(trusted))


def own_file_problem(st: os.stat_result, what: str, mode: int) -> str:
    """Why the publisher must not use `what` (its page or lock) with stat `st` ("" if it may).

    Only a file this uid created, with no other name, and the mode it was created with."""
    me = os.geteuid()
    if stat.S_ISLNK(st.st_mode):
        return f"{what} is a symbolic link"
    if not stat.S_ISREG(st.st_mode):
        return f"{what} is not a regular file"
    if st.st_uid != me:
        return (f"{what} is owned by {_who(st.st_uid)}, not by this publisher ({_who(me)}): "
                "someone else created it; left untouched")
    if st.st_nlink != 1:
        return (f"{what} has {st.st_nlink} links (a hard link to another file?); "
                "left untouched")
    if stat.S_IMODE(st.st_mode) != mode:
        return (f"{what} has mode {stat.S_IMODE(st.st_mode):#o}, not {mode:#o} as created; "
                "left untouched")
    return ""


def directory_problem(directory: str) -> str:
    """Why `directory` cannot hold a page that only the publisher can write ("" if it can).

    The directory itself must be owned by root or this uid and writable by nobody else (else
    anyone could take the page's or the lock's name first, or rename them); each ancestor must
    be owned by root or this uid and not writable by others unless sticky (then others cannot
    rename what they do not own)."""
    me = os.geteuid()
    real = os.path.realpath(directory)
    parts = [real]
    while parts[-1] != "/":
        parts.append(os.path.dirname(parts[-1]))
    for i, d in enumerate(parts):
        try:
            st = os.lstat(d)
        except OSError as e:
            return f"directory {d}: {e.strerror}"
        if not stat.S_ISDIR(st.st_mode):
            return f"{d} is not a directory"
        if st.st_uid not in (0, me):
            return (f"directory {d} is owned by {_who(st.st_uid)}, who could replace the page; "
                    f"use a directory owned by root or {_who(me)} (default {DEFAULT_DIR})")
        writable_by_others = st.st_mode & 0o022
        sticky = st.st_mode & stat.S_ISVTX
        if writable_by_others and (i == 0 or not sticky):
            return (f"directory {d} is writable by others (mode {stat.S_IMODE(st.st_mode):#o}): "
                    "anyone could take the page's name first; use a directory only the publisher "
                    f"can write (default {DEFAULT_DIR})")
    return ""


def lock_holders(fd: int) -> list[int]:
    """Pids holding a lock on the file open at `fd`, from /proc/locks (the kernel's own record
    of who took it, so it names the real holder, not whoever last wrote a pid somewhere)."""
    st = os.fstat(fd)
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = []
    try:
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 6 or fields[1] == "->":  # "->": a waiter, not a holder
                    continue
                if fields[5] == want:
                    try:
                        pids.append(int(fields[4]))
                    except ValueError:
                        pass
    except OSError:
        pass
    return sorted(set(pids))
