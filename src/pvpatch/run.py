"""`pvpatch run [--mode auto|native|pv] [--hints-path P] [--stats] [--json F] -- PROGRAM ARGS...`

Starts an unmodified PROGRAM with libpvpatch-preload.so preloaded: its default, normal and
adaptive pthread mutexes, its spinlocks and its condition variables run on pvpatch's switchable
lock (docs/run.md).  The command only sets the environment the library reads and execs PROGRAM,
so PROGRAM keeps this process id, its signals and its exit status:

  PVPATCH_MODE        --mode (auto: the library's agent follows the host's hint page, as
                      pvpatch.auto() does; native, pv: that variant for the whole run)
  PVPATCH_HINTS_PATH  --hints-path
  PVPATCH_STATS=1     --stats: acquisitions, contention, sleeps and switches on stderr at exit
  PVPATCH_STATS_JSON  --json F: the same, written to F at exit
  LD_PRELOAD          the library, appended to an existing LD_PRELOAD

A PROGRAM that cannot be found exits 127, one that cannot be executed 126, as in a shell.
"""
from __future__ import annotations

import os

LIBRARY = "libpvpatch-preload.so"
MODES = ("auto", "native", "pv")
EXIT_NOT_FOUND, EXIT_NOT_EXECUTABLE = 127, 126


class PreloadMissing(Exception):
    """The installed package has no preload library (a build without it)."""


def preload_path() -> str:
    """The absolute path of the installed libpvpatch-preload.so."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), LIBRARY)
    if not os.path.isfile(path):
        raise PreloadMissing(f"{path} does not exist: this pvpatch was installed without its "
                             f"preload library; reinstall it (pip install --force-reinstall .)")
    return path


def environment(base: dict[str, str], *, mode: str = "auto", hints_path: str | None = None,
                stats: bool = False, json_path: str | None = None) -> dict[str, str]:
    """The environment PROGRAM runs with: `base` plus the library and its settings."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    lib = preload_path()
    if any(c in lib for c in " :\t\n"):
        # ld.so splits LD_PRELOAD at spaces and colons: such a path cannot be preloaded.
        raise PreloadMissing(f"{lib}: the path holds a space or a colon, which LD_PRELOAD cannot "
                             f"carry; install pvpatch under a path without them")
    env = dict(base)
    old = env.get("LD_PRELOAD", "").strip()
    env["LD_PRELOAD"] = f"{old}:{lib}" if old else lib
    env["PVPATCH_MODE"] = mode
    for key in ("PVPATCH_HINTS_PATH", "PVPATCH_STATS", "PVPATCH_STATS_JSON",
                "PVPATCH_STATS_ROOT"):
        env.pop(key, None)  # this run's settings, not those of an enclosing run
    if hints_path is not None:
        env["PVPATCH_HINTS_PATH"] = os.path.abspath(hints_path)
    if stats:
        env["PVPATCH_STATS"] = "1"
    if json_path is not None:
        env["PVPATCH_STATS_JSON"] = os.path.abspath(json_path)
    return env
