"""Registration is safe for a thread already running a site (issue 8, item 3).

The build-time rendering is one instruction, `call *slot(%rip)` stretched with prefixes, so the
only instruction boundaries a thread can be stopped at are the site's start and its end (and
inside the slot's function, returning to the end).  A thread of a real extension (tests/
matrix_ext, built with gcc) runs a 13-byte site in a loop; the test stops it with ptrace at each
of those places, has the process register the module and switch it while the thread is
stopped, resumes it and checks every result the thread computed.  Single-stepping through the
default site shows that no other address inside it is ever an instruction boundary, and capstone
decodes the site as one instruction before and after registration.
"""
import ctypes
import json
import os
import select
import shutil
import subprocess
import sys
import sysconfig
import time

import pytest

import pvpatch
from pvpatch.disasm import decode

HERE = os.path.dirname(__file__)
EXT = os.path.join(HERE, "matrix_ext")

CHILD = r"""
import importlib.util, json, sys, pvpatch
from pvpatch import descriptor
spec = importlib.util.spec_from_file_location(sys.argv[2], sys.argv[1])
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
desc = descriptor.read_module(descriptor.capsule_address(mod.__pvpatch__))
ops = desc.groups[0].ops
add = [o.name for o in ops].index("add")
site = [r for r in desc.runtime if r.op == add and r.length == 13]
assert len(site) == 1, site
tid = mod.worker_start()
print(json.dumps({"tid": tid, "site": site[0].addr, "len": 13, "slot": ops[add].slot,
                  "native": ops[add].impls[0].fn, "pv": ops[add].impls[1].fn}), flush=True)
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "register":
        pvpatch.register_module(mod)
        pvpatch.runtime_patch({"mx": "pv"})
        print(json.dumps({"ok": True}), flush=True)
    elif cmd == "stats":
        print(json.dumps({"stats": mod.worker_stats()}), flush=True)
    elif cmd == "stop":
        print(json.dumps({"stats": mod.worker_stop()}), flush=True)
        break
"""

PTRACE_SINGLESTEP, PTRACE_GETREGS, PTRACE_DETACH = 9, 12, 17
PTRACE_SEIZE, PTRACE_INTERRUPT = 0x4206, 0x4207
WALL = 0x40000000
RIP, RSP = 16, 19  # in struct user_regs_struct

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
_libc.ptrace.restype = ctypes.c_long


def ptrace(req, tid, addr=None, data=None):
    if _libc.ptrace(req, tid, addr, data) == -1:
        e = ctypes.get_errno()
        raise OSError(e, f"ptrace({req:#x}, {tid}): {os.strerror(e)}")


def regs(tid):
    buf = (ctypes.c_ulong * 27)()
    ptrace(PTRACE_GETREGS, tid, None, ctypes.addressof(buf))
    return buf


def step(tid):
    ptrace(PTRACE_SINGLESTEP, tid)
    _, status = os.waitpid(tid, WALL)
    assert os.WIFSTOPPED(status), f"thread {tid} not stopped after a step: status {status:#x}"
    return regs(tid)[RIP]


def read_mem(pid, addr, n):
    with open(f"/proc/{pid}/mem", "rb") as f:
        f.seek(addr)
        return f.read(n)


def readline(proc, timeout=60):
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        proc.kill()
        raise AssertionError(f"child silent for {timeout} s; stderr: {proc.stderr.read()[-3000:]}")
    line = proc.stdout.readline()
    if not line:
        raise AssertionError(f"child exited {proc.wait()}: {proc.stderr.read()[-3000:]}")
    return json.loads(line)


@pytest.fixture(scope="module")
def ext(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    name = "mx_running"
    out = str(tmp_path_factory.mktemp("running") / (name + sysconfig.get_config_var("EXT_SUFFIX")))
    cmd = ["gcc", "-O2", "-shared", "-fPIC", "-fvisibility=hidden", "-Wall", "-Werror",
           f"-DMX_MOD={name}", f"-I{sysconfig.get_paths()['include']}",
           f"-I{pvpatch.get_include()}", f"-I{EXT}", os.path.join(EXT, "mx_ops.c"),
           os.path.join(EXT, "mx_sites.c"), "-o", out]
    subprocess.run(cmd, check=True, timeout=300)
    return out, name


@pytest.mark.parametrize("where", ["start", "in-slot-function", "end"])
def test_thread_stopped_in_a_default_site_survives_registration(ext, where):
    path, name = ext
    proc = subprocess.Popen([sys.executable, "-c", CHILD, path, name], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tid = None
    try:
        info = readline(proc)
        tid, site, length = info["tid"], info["site"], info["len"]
        default = read_mem(proc.pid, site, length)
        insns = decode(default, site)
        assert len(insns) == 1 and insns[0][:2] == (site, length), insns  # no inner boundary
        assert insns[0][2].replace("%cs:", "").startswith("callq *"), insns

        ptrace(PTRACE_SEIZE, tid)
        ptrace(PTRACE_INTERRUPT, tid)
        _, status = os.waitpid(tid, WALL)
        assert os.WIFSTOPPED(status)
        seen, rip = set(), regs(tid)[RIP]
        for _ in range(100000):
            if rip == site:
                break
            rip = step(tid)
        assert rip == site, "the thread never reached the site"
        if where == "in-slot-function":
            rip = step(tid)
            r = regs(tid)
            assert rip == info["native"], hex(rip)
            assert int.from_bytes(read_mem(proc.pid, r[RSP], 8), "little") == site + length
        elif where == "end":
            while not (rip == site + length):
                if site <= rip < site + length:
                    seen.add(rip)
                rip = step(tid)
            assert seen == {site}, f"boundaries inside the site: {sorted(map(hex, seen))}"
        proc.stdin.write("register\n")
        proc.stdin.flush()
        assert readline(proc).get("ok")
        after = read_mem(proc.pid, site, length)
        insns = decode(after, site)
        assert len(insns) == 1 and insns[0][1] == length, insns
        assert insns[0][2] == f"callq {info['pv']:#x}", insns  # switched to pv while stopped
        ptrace(PTRACE_DETACH, tid)
        tid = None
        proc.stdin.write("stats\n")
        proc.stdin.flush()
        before = readline(proc)["stats"][0]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            proc.stdin.write("stats\n")
            proc.stdin.flush()
            if readline(proc)["stats"][0] > before + 1000:
                break
            time.sleep(0.01)
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        stats = readline(proc)["stats"]
        assert not isinstance(stats, str), stats
        iters, bad, last_bad = stats
        assert iters > before + 1000, f"the thread did not run on after registration: {stats}"
        assert bad == 0, f"{bad} wrong results, last {last_bad:#x}"
    finally:
        if tid is not None:
            try:
                ptrace(PTRACE_DETACH, tid)
            except OSError:
                pass
        proc.kill()
        proc.wait(timeout=30)
