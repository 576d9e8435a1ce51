"""Helpers for the hint tests: real hostd processes, bounded waits."""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time

PY = sys.executable


def wait_until(pred, timeout: float, what: str, step: float = 0.01):
    """Poll `pred` until it returns something truthy; AssertionError naming `what` on timeout."""
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


class Proc:
    """A child process whose output is read line by line with deadlines.

    A thread drains stdout into a queue: select() on a buffered pipe misses lines that the
    buffer already holds."""

    def __init__(self, args: list[str], **kw):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env, **kw)
        self.lines: list[str] = []
        self._q: queue.Queue = queue.Queue()
        self._t = threading.Thread(target=self._drain, daemon=True)
        self._t.start()

    def _drain(self):
        for line in self.p.stdout:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    @property
    def pid(self) -> int:
        return self.p.pid

    def wait_line(self, needle: str, timeout: float = 10.0) -> str:
        end = time.monotonic() + timeout
        while True:
            for line in self.lines:
                if needle in line:
                    self.lines.remove(line)
                    return line
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line with {needle!r} within {timeout} s; "
                                     f"stdout so far: {self.lines!r}; status {self.p.poll()}")
            try:
                line = self._q.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self._q.put(None)
                status = self.p.wait(5)
                raise AssertionError(f"process ended (status {status}) before a line with "
                                     f"{needle!r}; stdout: {self.lines!r}; stderr: "
                                     f"{self.p.stderr.read()[-3000:]}")
            self.lines.append(line)

    def wait(self, timeout: float = 10.0) -> int:
        return self.p.wait(timeout)

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.p.poll() is None:
            self.p.send_signal(sig)

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(10)
        self._t.join(10)
        for f in (self.p.stdout, self.p.stderr):
            f.close()


def hostd(path, *args) -> Proc:
    return Proc([PY, "-m", "pvpatch.cli", "hostd", "--path", str(path), *map(str, args)])


def cli(*args, timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "pvpatch.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
