"""W^X: no mapping of this process may be writable and executable at once.  A check for tests
and for the curious: one look, or a sampler thread that looks continuously."""
from __future__ import annotations

import threading


def writable_executable(maps: str | None = None) -> list[str]:
    """The lines of /proc/self/maps whose permissions include both w and x."""
    if maps is None:
        with open("/proc/self/maps") as f:
            maps = f.read()
    out = []
    for line in maps.splitlines():
        perms = line.split()[1] if len(line.split()) > 1 else ""
        if "w" in perms and "x" in perms:
            out.append(line)
    return out


class Sampler:
    """Reads /proc/self/maps in a loop until stopped; collects any W+X line it ever sees."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self.samples = 0
        self.bad: list[str] = []
        self._t = threading.Thread(target=self._run, name="pvpatch-wx-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.bad.extend(writable_executable())
            self.samples += 1

    def start(self) -> None:
        self._t.start()

    def stop(self) -> tuple[int, list[str]]:
        self._stop.set()
        self._t.join(10)
        return self.samples, self.bad
