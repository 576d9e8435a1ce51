"""pvpatch's exceptions.

Every error pvpatch raises on purpose is a PvpatchError.  Failed system calls come from the C core
as OSError with the syscall's name in ``filename``; ``syscall_error`` turns them into SyscallError,
which keeps errno and names the call.
"""
from __future__ import annotations


class PvpatchError(Exception):
    """Base class of pvpatch's errors."""


class SyscallError(PvpatchError, OSError):
    """A system call failed.  ``errno``, ``strerror`` and ``syscall`` say which and why."""

    def __init__(self, errno: int, strerror: str, syscall: str):
        OSError.__init__(self, errno, strerror)
        self.syscall = syscall

    def __str__(self) -> str:
        return f"{self.syscall}: {self.strerror} (errno {self.errno})"


def syscall_error(exc: OSError) -> SyscallError:
    return SyscallError(exc.errno or 0, exc.strerror or str(exc), exc.filename or "?")


class RegistryError(PvpatchError, LookupError):
    """An unknown group, op or variant; the message lists what exists."""


class SiteError(PvpatchError, ValueError):
    """A site record or the bytes at a site are not what they must be; names the site."""

    def __init__(self, site: str, problem: str):
        super().__init__(f"site {site}: {problem}")
        self.site = site
        self.problem = problem


class ArgumentError(PvpatchError, TypeError):
    """An API argument of the wrong type; the message names it and what was expected."""


class BatchRefused(PvpatchError):
    """A batch was refused before anything was written."""


class ElfError(PvpatchError, ValueError):
    """An ELF file's pvpatch sections are missing or corrupt."""
