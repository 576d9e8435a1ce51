"""What a guest sees: open the hint page read-only, take consistent snapshots, judge them.

Any problem with the page - missing, unreadable, truncated, garbage, another version, a publisher
that stopped or stopped beating - yields a HintState with no hints (`usable` false) and a reason,
never an exception: a guest must keep running on the safe default whatever the page holds.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import stat
import time

from ..errors import PvpatchError
from . import abi, shm, trust


@dataclasses.dataclass
class HintState:
    """One observation of the page by a guest.

    valid: the page decoded and passed validation.  stale: valid but no heartbeat within the bound
    (or the publisher stopped).  usable = valid and not stale: only then do its hints count.
    problem: why the page is not usable ("" when it is).  seen_ns: CLOCK_MONOTONIC when read.
    kind: for a page that is not valid, "missing", "untrusted" or "invalid" (see status).
    cause_ns: the publication a guest acting on this observation reacts to (set by the notifier:
    changed_ns, or the first fresh heartbeat after a period without usable hints)."""
    path: str
    valid: bool
    stale: bool
    problem: str
    seen_ns: int
    page: abi.HintPage | None = None
    kind: str = "invalid"
    cause_ns: int | None = None

    @property
    def status(self) -> str:
        """One word: usable, missing, untrusted, invalid, stale or stopped."""
        if not self.valid:
            return self.kind
        if self.page.state == abi.STATE_STOPPED:
            return "stopped"
        return "stale" if self.stale else "usable"

    @property
    def usable(self) -> bool:
        return self.valid and not self.stale

    @property
    def generation(self) -> int | None:
        return self.page.generation if self.page is not None and self.valid else None

    @property
    def active_hints(self) -> int:
        """Hints in force for a guest: none unless the page is usable."""
        return self.page.active_hints if self.usable else 0

    def to_json(self) -> dict:
        p = self.page if self.valid else None
        return {
            "path": self.path,
            "valid": self.valid,
            "stale": self.stale,
            "usable": self.usable,
            "status": self.status,
            "problem": self.problem or None,
            "generation": p.generation if p else None,
            "seqcount": p.seqcount if p else None,
            "state": abi.STATES.get(p.state) if p else None,
            "publisher_pid": p.publisher_pid if p else None,
            "active_hints": abi.names(p.active_hints, abi.HINTS) if p else [],
            "effective_hints": abi.names(self.active_hints, abi.HINTS),
            "ever_hints": abi.names(p.ever_hints, abi.HINTS) if p else [],
            "features": abi.names(p.features, abi.FEATURES) if p else [],
            "measurements": p.measurements() if p else None,
            "age_s": (self.seen_ns - p.heartbeat_ns) / 1e9 if p else None,
            "stale_after_s": p.stale_bound_ns() / 1e9 if p else None,
            "interval_s": p.interval_ns / 1e9 if p else None,
            "publications": p.publications if p else None,
        }


class HintReader:
    """A guest's handle on the page at `path` (default abi.DEFAULT_PATH).

    Only a page owned by root, by this process's uid or by `publisher_uid`, and writable by
    nobody else, is trusted (trust.py); any other is "untrusted" and gives no hints.  This is
    checked on the open file at every read, so a page that changes hands stops counting at once.

    The file is opened O_RDONLY and mapped PROT_READ: the guest cannot write it.  The mapping only
    serves the generation futex; contents are read with pread (see shm.snapshot).  When the page
    is not usable the reader checks whether the path now names another file (a publisher that
    recreated it) and reopens."""

    def __init__(self, path: str | None = None, *, publisher_uid: int | None = None):
        self.path = os.fspath(path) if path else abi.DEFAULT_PATH
        self.trusted = trust.trusted_uids(trust.check_publisher_uid(publisher_uid))
        self.fd: int | None = None
        self.map: shm.Mapping | None = None
        self._ident: tuple[int, int] | None = None

    # --- open / close ---------------------------------------------------------------------

    def _open(self) -> tuple[str, str]:
        """Open and map the page; returns ("", "") or (kind, problem)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            return "missing", "missing (no publisher has created it)"
        except OSError as e:
            if e.errno == errno.ELOOP:
                return "untrusted", "untrusted: the path is a symbolic link"
            return "invalid", f"cannot open: {e.strerror} (errno {e.errno})"
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                return "invalid", "not a regular file"
            self.map = shm.Mapping(fd, abi.FILE_SIZE, writable=False)
        except (PvpatchError, OSError) as e:
            os.close(fd)
            return "invalid", f"cannot map: {e}"
        self.fd = fd
        self._ident = (st.st_dev, st.st_ino)
        return "", ""

    def close(self) -> None:
        if self.map is not None:
            self.map.close()
            self.map = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self._ident = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _replaced(self) -> bool:
        """Does the path now name a different file (or none) than the one we hold?"""
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except OSError:
            return True
        return (st.st_dev, st.st_ino) != self._ident

    # --- reading --------------------------------------------------------------------------

    def read(self, now_ns: int | None = None) -> HintState:
        """One consistent, validated observation.  Never raises for a bad page."""
        if self.fd is not None and self._replaced():
            self.close()
        if self.fd is None:
            kind, problem = self._open()
            if problem:
                return HintState(self.path, False, False, problem, time.monotonic_ns(),
                                 kind=kind)
        try:
            st = os.fstat(self.fd)
            # Trust before content: who could have written this file?  Checked on the open
            # file at every read (an owner's chmod or chown takes effect at once).
            untrusted = trust.page_problem(st, self.trusted)
            if untrusted:
                return HintState(self.path, False, False, untrusted, time.monotonic_ns(),
                                 kind="untrusted" if untrusted.startswith("untrusted")
                                 else "invalid")
            size = st.st_size
            buf, _ = shm.snapshot(self.fd, abi.SIZE_V1)
            page = abi.decode(buf)
            now = time.monotonic_ns() if now_ns is None else now_ns
            abi.validate(page, file_size=size, now_ns=now)
        except abi.HintPageError as e:
            return HintState(self.path, False, False, str(e), time.monotonic_ns())
        except OSError as e:
            return HintState(self.path, False, False, f"cannot read: {e.strerror}",
                             time.monotonic_ns())
        stale = page.is_stale(now)
        # seen: when the guest holds the consistent, validated snapshot (notification complete)
        seen = time.monotonic_ns()
        problem = ""
        if page.state == abi.STATE_STOPPED:
            problem = f"publisher (pid {page.publisher_pid}) stopped"
        elif stale:
            problem = (f"stale: no heartbeat for {page.age_ns(now) / 1e9:.3f} s "
                       f"(bound {page.stale_bound_ns() / 1e9:.3f} s; publisher pid "
                       f"{page.publisher_pid} dead or stuck?)")
        return HintState(self.path, True, stale, problem, seen, page)

    def wait(self, generation: int | None, timeout_s: float) -> str:
        """Sleep until the generation moves away from `generation` or `timeout_s` passes.

        Without a mapping or a known generation there is nothing to wait on: sleep the timeout
        (the caller polls for the page to appear).  Returns what futex_wait returns, or "slept"."""
        if self.map is None or generation is None:
            time.sleep(max(0.0, timeout_s))
            return "slept"
        try:
            return shm.futex_wait(self.map.generation_addr, generation, timeout_s)
        except PvpatchError:
            # EFAULT: the page was truncated under the mapping.  Drop it; the next read reopens.
            self.close()
            return "fault"
