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
        self.history: list[str] = []  # every line read so far, matched or not
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
            self.history.append(line)

    def drain(self, timeout: float = 10.0) -> list[str]:
        """After the process ended: read the rest of its output; returns the history."""
        end = time.monotonic() + timeout
        while True:
            try:
                line = self._q.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"output of pid {self.pid} did not end in {timeout} s")
            if line is None:
                self._q.put(None)
                return self.history
            self.lines.append(line)
            self.history.append(line)

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


# --- other users (the trust tests run as root and drop to `nobody` in a child) ---------------

NOBODY = 65534


def is_root() -> bool:
    return os.geteuid() == 0


class UserChild:
    """`fn()` run as `uid` in a forked child (os.setuid after fork: no exec, because the
    interpreter may live where that user cannot read).  fn runs until it returns; what it
    returns (a str) or the exception it raised comes back through a pipe.  With hold=True the
    child then waits until release() before exiting (to keep a lock or a file open)."""

    def __init__(self, fn, uid: int = NOBODY, hold: bool = False):
        r, w = os.pipe()
        gr, gw = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: no threads, no logging, only os calls and fn
            code = 0
            try:
                os.close(r)
                os.close(gw)
                if uid != os.geteuid():
                    os.setgroups([])
                    os.setgid(uid)
                    os.setuid(uid)
                try:
                    out = "ok " + str(fn())
                except BaseException as e:  # noqa: B036 - reported to the parent
                    out = f"raised {type(e).__name__}: {e}"
                    code = 1
                os.write(w, out.encode()[:60000])
                os.close(w)
                if hold:
                    os.read(gr, 1)
            except BaseException:  # noqa: B036
                code = 3
            os._exit(code)
        os.close(w)
        os.close(gr)
        self.pid, self._r, self._gw = pid, r, gw
        self.result: str | None = None

    def wait_result(self, timeout: float = 10.0) -> str:
        """What fn returned ("ok ...") or raised ("raised ..."); AssertionError on timeout."""
        if self.result is None:
            import select
            if not select.select([self._r], [], [], timeout)[0]:
                raise AssertionError(f"user child {self.pid} gave no result in {timeout} s")
            chunks = []
            while True:
                b = os.read(self._r, 65536)
                if not b:
                    break
                chunks.append(b)
            self.result = b"".join(chunks).decode()
        return self.result

    def release(self, timeout: float = 10.0) -> int:
        try:
            os.write(self._gw, b"x")
        except OSError:
            pass
        end = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self._r)
                os.close(self._gw)
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() > end:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                raise AssertionError(f"user child {self.pid} did not exit")
            time.sleep(0.01)


def as_user(fn, uid: int = NOBODY, timeout: float = 10.0) -> str:
    """Run fn() as `uid` in a forked child; its result ("ok ..." or "raised ...")."""
    c = UserChild(fn, uid)
    try:
        return c.wait_result(timeout)
    finally:
        c.release()
