"""Shared mappings of the hint page, seqcount reads and writes, and the generation futex.

Mechanism only (no decisions): libc's mmap and the futex system call through ctypes, because a
futex needs the address of the word, which Python's mmap object does not give.

Memory ordering.  pvpatch runs on x86-64, whose memory model (TSO) keeps stores in program order
and loads in program order, so the seqcount's smp_wmb()/smp_rmb() are compiler barriers only; each
access here is a separate system call (pwrite, pread), which nothing reorders across.  The seqcount
and the generation are 4-byte aligned words.  Nobody touches the page through a mapping from user
space: the mapping exists for the futex only (see Mapping).
"""
from __future__ import annotations

import ctypes
import errno as _errno
import os

from ..errors import SyscallError
from . import abi

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mprotect.restype = ctypes.c_int
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.syscall.restype = ctypes.c_long

PROT_READ, PROT_WRITE = 1, 2
MAP_SHARED = 1
MAP_FAILED = ctypes.c_void_p(-1).value
SYS_futex = 202  # x86-64
FUTEX_WAIT, FUTEX_WAKE = 0, 1  # shared futexes: no FUTEX_PRIVATE_FLAG, readers are other processes
INT_MAX = 2**31 - 1

# A reader retries a torn snapshot for up to 20 ms (PVAGENT_SNAPSHOT_WAIT_NS, _core/agent.h):
# a publisher holds the seqcount odd for microseconds, or for a time slice when it is preempted
# mid-write; only a broken page or a publisher that died mid-write outlasts that, and the caller
# then reports an invalid page.


def _oserror(syscall: str) -> SyscallError:
    e = ctypes.get_errno()
    return SyscallError(e, os.strerror(e), syscall)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def futex_wait(addr: int, expected: int, timeout_s: float | None) -> str:
    """Sleep while the 32-bit word at `addr` holds `expected`, at most `timeout_s`.

    Returns "woken", "changed" (the word no longer held `expected`: EAGAIN), "timeout" or
    "interrupted" (EINTR).  Callers always re-read the page: a wake-up is a hint, not a fact."""
    ts = None
    if timeout_s is not None:
        timeout_s = max(0.0, timeout_s)
        ts = _Timespec(int(timeout_s), int((timeout_s % 1) * 1e9))
    r = _libc.syscall(ctypes.c_long(SYS_futex), ctypes.c_void_p(addr), ctypes.c_int(FUTEX_WAIT),
                      ctypes.c_uint32(expected), ctypes.byref(ts) if ts is not None else None,
                      None, ctypes.c_int(0))
    if r == 0:
        return "woken"
    e = ctypes.get_errno()
    if e == _errno.EAGAIN:
        return "changed"
    if e == _errno.ETIMEDOUT:
        return "timeout"
    if e == _errno.EINTR:
        return "interrupted"
    raise SyscallError(e, os.strerror(e), "futex")


def futex_wake(addr: int, n: int = INT_MAX) -> int:
    """Wake up to `n` waiters on the word at `addr` (any process mapping the same file)."""
    r = _libc.syscall(ctypes.c_long(SYS_futex), ctypes.c_void_p(addr), ctypes.c_int(FUTEX_WAKE),
                      ctypes.c_int(n), None, None, ctypes.c_int(0))
    if r < 0:
        raise _oserror("futex")
    return r


def snapshot(fd: int, length: int) -> tuple[bytes, int]:
    """A consistent copy of the first `length` bytes of the page open at `fd`: (bytes, tries).

    Reader side of the seqcount: read seq (s1); if odd, a write is in progress: retry; copy the
    page; read seq again (s2); a change means the copy may be torn: retry.  Load order
    s1 -> copy -> s2 pairs with the writer's store order odd -> payload -> even (publish below).

    Readers copy with pread, not through their mapping: a page truncated under a mapping raises
    SIGBUS on access, which would let whoever owns the file crash every guest; pread just comes
    back short.  (The mapping is there for the futex, which the kernel reads with a fault-safe
    access.)  Each pread is a separate system call, which keeps s1, the copy and s2 in order.

    Raises HintPageError when the file is too short or no consistent copy came within
    20 ms."""
    from .. import _core
    ok, a, b = _core.hint_snapshot(fd, length)  # agent.c: pvagent_snapshot, R1-R3 above
    if not ok:
        raise abi.HintPageError(a, b)
    return a, b


class Mapping:
    """A MAP_SHARED mapping of an open file descriptor (the caller keeps the fd).

    Only the futex needs it: the kernel reads and wakes the word with fault-safe accesses.  Nobody
    in pvpatch loads or stores through it (SIGBUS if the file shrinks under it)."""

    def __init__(self, fd: int, length: int, writable: bool):
        prot = PROT_READ | (PROT_WRITE if writable else 0)
        addr = _libc.mmap(None, length, prot, MAP_SHARED, fd, 0)
        if addr in (None, MAP_FAILED):
            raise _oserror("mmap")
        self.addr = addr
        self.length = length
        self.writable = writable

    def close(self) -> None:
        if self.addr is not None:
            if _libc.munmap(self.addr, self.length) != 0:
                raise _oserror("munmap")
            self.addr = None

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    def mprotect(self, prot: int) -> None:
        if _libc.mprotect(self.addr, self.length, prot) != 0:
            raise _oserror("mprotect")

    @property
    def generation_addr(self) -> int:
        return self.addr + abi.OFF_GENERATION


def publish(fd: int, payload: bytes, seq: int, generation: int | None) -> int:
    """Writer side of the seqcount: make `payload` (SIZE_V1 bytes from abi.encode) visible
    atomically in the page open at `fd`.  `seq` is the (even) count of the last publication.

      1. seqcount = seq + 1 (odd): readers that see it retry.    smp_wmb, partner: reader's s2
      2. write every field but seqcount and generation.
      3. if `generation` is given, store it (the futex word), inside the window so that a
         snapshot's generation always matches its contents.
      4. seqcount = seq + 2 (even).                              smp_wmb, partner: reader's s1
    The caller then wakes the futex (step 5) when the generation moved.

    Every store is a pwrite, never a store through a mapping: a file truncated under a mapping
    raises SIGBUS on access, and anyone who could truncate the page could then kill its
    publisher; pwrite on a short file just extends it.  Each pwrite is a separate system call
    into the page cache that the readers' preads and futexes see, which keeps 1-4 in order
    (x86-64 TSO; see the module comment).  The seqcount and the generation are aligned 4-byte
    pwrites.  Returns the new (even) seqcount."""
    seq &= 0xFFFFFFFF
    if seq & 1:  # a previous publisher died mid-write: its odd count must not be kept
        seq += 1
    odd, even = (seq + 1) & 0xFFFFFFFF, (seq + 2) & 0xFFFFFFFF
    g0, g1 = abi.OFF_SEQCOUNT, abi.OFF_GENERATION + 4
    _pwrite_all(fd, odd.to_bytes(4, "little"), abi.OFF_SEQCOUNT)           # 1
    _pwrite_all(fd, payload[:g0], 0)                                        # 2
    _pwrite_all(fd, payload[g1:], g1)
    if generation is not None:                                              # 3
        _pwrite_all(fd, (generation & 0xFFFFFFFF).to_bytes(4, "little"), abi.OFF_GENERATION)
    _pwrite_all(fd, even.to_bytes(4, "little"), abi.OFF_SEQCOUNT)          # 4
    return even


def _pwrite_all(fd: int, data: bytes, off: int) -> None:
    n = os.pwrite(fd, data, off)
    if n != len(data):  # a regular file on tmpfs writes all or fails; say so if not
        raise SyscallError(_errno.EIO, f"short write ({n} of {len(data)} bytes)", "pwrite")


def load32(fd: int, off: int) -> int | None:
    """The 32-bit word at `off` of the file, or None if the file ends before it."""
    b = os.pread(fd, 4, off)
    return int.from_bytes(b, "little") if len(b) == 4 else None
