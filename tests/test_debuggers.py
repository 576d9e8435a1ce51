"""Debuggers and profilers in registered modules (docs/protocol.md, "What debuggers and profilers
see"): gdb breakpoints hit, can be removed and never stay in the text; a breakpoint in a site
makes batches refuse instead of being overwritten; a foreign int3 in a site refuses registration;
perf names the functions of registered code.  Every subprocess is bounded."""
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

import pvpatch
from pvpatch import _core, gen

pytestmark = pytest.mark.skipif(_core.writer_status()["path"] != "proc-mem",
                                reason="the writer's fallback path moves registered text into "
                                       "a memfd; these tests are about the file mapping")

# Reads bytes of the loaded .so file for an address: what the text held before anyone wrote.
FILE_BYTES = textwrap.dedent("""
    def file_bytes(addr, n):
        for line in open("/proc/self/maps"):
            f = line.split()
            lo, hi = (int(x, 16) for x in f[0].split("-"))
            if lo <= addr < hi:
                with open(f[5], "rb") as so:
                    so.seek(addr - lo + int(f[2], 16))
                    return so.read(n)
    def impl(op, variant):
        g = next(g for g in pvpatch.core_module.desc.groups if g.name == "selftest")
        o = next(o for o in g.ops if o.name == op)
        return o.impls[g.variants.index(variant)].fn
""")


def _gdb():
    gdb = shutil.which("gdb")
    if gdb is None:
        pytest.skip("gdb is not installed (.ci/run installs it)")
    probe = subprocess.run([gdb, "-nx", "-batch", "-ex", "run", "--args", "/bin/true"],
                           capture_output=True, text=True, timeout=60)
    if "exited normally" not in probe.stdout + probe.stderr:  # e.g. ptrace forbidden here
        pytest.skip(f"gdb cannot run a program here: {(probe.stdout + probe.stderr)[-300:]}")
    return gdb


def test_gdb_breakpoint_set_before_registration_hits_and_is_removed(tmp_path):
    gdb = _gdb()
    script = tmp_path / "target.py"
    header = "import pvpatch\nfrom pvpatch import _core\n" + FILE_BYTES
    script.write_text(header + textwrap.dedent("""
        pvpatch.runtime_patch({"selftest": "pv"})
        fn = impl("value", "pv")
        assert _core.selftest_call(0) == 0x1002     # gdb's breakpoint in value_pv hits here
        assert _core.read(fn, 6) == file_bytes(fn, 6), "a breakpoint stayed in the text"
        for i in range(300):
            pvpatch.runtime_patch({"selftest": ("alt", "native", "pv")[i % 3]})
            assert _core.selftest_call(0) == (0x1003, 0x1001, 0x1002)[i % 3]
        assert _core.read(fn, 6) == file_bytes(fn, 6)
        print("TARGET DONE")
    """))
    out = subprocess.run([gdb, "-nx", "-batch", "-ex", "set breakpoint pending on",
                          "-ex", "break value_pv", "-ex", "run", "-ex", "bt 4",
                          "-ex", "info breakpoints",
                          "-ex", "delete", "-ex", "continue", "--args", sys.executable,
                          str(script)], capture_output=True, text=True, timeout=120)
    text = out.stdout + out.stderr
    assert "Breakpoint 1, " in text and "value_pv" in text, text
    assert "breakpoint already hit 1 time" in text, text
    # The backtrace reaches the function holding the patched call (beyond it, unwinding depends
    # on the site macro's CFI, not on the writer).
    assert "in site0" in text, text
    assert "TARGET DONE" in text and "exited normally" in text, text
    assert "SIGTRAP" not in text, text


def test_gdb_breakpoint_in_a_site_refuses_batches_and_leaves_with_detach(tmp_path):
    gdb = _gdb()
    go = tmp_path / "go"
    script = tmp_path / "target.py"
    script.write_text("import os, sys, time\nimport pvpatch\nfrom pvpatch import _core\n"
                      + FILE_BYTES + textwrap.dedent(f"""
        fn = _core.selftest_sites()[0][0]  # the function selftest_call(0) runs, and its site
        site = min((s for s in pvpatch.core_module.sites
                    if s.group == "selftest" and s.addr >= fn), key=lambda s: s.addr)
        pristine = _core.read(fn, site.addr - fn)
        print(os.getpid(), site.addr, flush=True)
        refused = ok = 0
        deadline = time.monotonic() + 60
        i = 0
        while not os.path.exists({str(go)!r}) and time.monotonic() < deadline:
            try:
                pvpatch.runtime_patch({{"selftest": ("pv", "alt", "native")[i % 3]}})
                ok += 1
            except pvpatch.BatchRefused as exc:
                assert site.name in str(exc), exc
                refused += 1
            i += 1
            _core.selftest_call(0)
            time.sleep(0.0005)
        # gdb is gone: batches go through again, and the site holds exactly what current() says
        for v in ("pv", "alt", "native"):
            pvpatch.runtime_patch({{"selftest": v}})
        cur = pvpatch.current()["selftest"]
        for s in pvpatch.registry.sites("selftest"):
            assert _core.read(s.addr, s.length) == s.renderings[cur], s.name
        assert _core.read(fn, site.addr - fn) == pristine
        print("TARGET DONE refused", refused, "ok", ok, flush=True)
    """))
    target = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        pid, site = target.stdout.readline().split()
        time.sleep(0.2)
        out = subprocess.run([gdb, "-nx", "-batch", "-p", pid, "-ex", f"break *{site}",
                              "-ex", "continue", "-ex", "info breakpoints", "-ex", "detach"],
                             capture_output=True, text=True, timeout=120)
        time.sleep(0.2)  # batches keep running, and refusing, for a while after the hit
        go.write_text("")
        rest, err = target.communicate(timeout=120)
    finally:
        if target.poll() is None:
            target.kill()
            target.wait()
    text = out.stdout + out.stderr
    assert "Breakpoint 1, " in text, f"{text}\n--- target\n{(err or '')[-3000:]}"
    assert target.returncode == 0, f"target: {target.returncode}\n{rest}\n{err}\n--- gdb\n{text}"
    assert "TARGET DONE" in rest
    refused = int(rest.split("refused")[1].split()[0])
    assert refused >= 1, rest  # the breakpoint was seen by validation, not overwritten


def test_foreign_int3_in_a_site_refuses_registration_by_name():
    g = gen.generate(4, group="dbg")
    site = g.desc.runtime[2].addr
    _core.write_code(site, b"\xcc")
    with pytest.raises(pvpatch.SiteError, match=r"runtime\[2\].*an int3 is there.*debugger"):
        pvpatch.register_desc(g.desc, text=g.text)
    assert "dbg" not in pvpatch.registry.groups


def test_perf_report_names_functions_of_registered_modules(tmp_path):
    perf = shutil.which("perf")
    if perf is None:
        pytest.skip("perf is not installed (.ci/run installs it)")
    probe = subprocess.run([perf, "record", "-q", "-o", str(tmp_path / "probe.data"), "--",
                            "true"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"perf record is not permitted here: {probe.stderr.strip()[:200]}")
    script = tmp_path / "target.py"
    script.write_text(textwrap.dedent("""
        import time, pvpatch
        from pvpatch import _core
        _core.selftest_start(2, 0, 0.0, _core.gettid())
        t0, i = time.monotonic(), 0
        while time.monotonic() - t0 < 1.0:
            pvpatch.runtime_patch({"selftest": ("pv", "alt", "native")[i % 3]})
            i += 1
            time.sleep(0.001)
        _core.selftest_stop(5.0)
        assert i > 10
    """))
    data = tmp_path / "perf.data"
    rec = subprocess.run([perf, "record", "-q", "-F", "999", "-o", str(data), "--",
                          sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120)
    assert rec.returncode == 0, rec.stderr
    rep = subprocess.run([perf, "report", "-i", str(data), "--stdio", "--sort", "dso,sym"],
                         capture_output=True, text=True, timeout=120)
    assert rep.returncode == 0, rep.stderr
    core = os.path.basename(_core.__file__)
    ours = [l for l in rep.stdout.splitlines() if core in l]
    syms = {l.split("[.]")[1].strip() for l in ours if "[.]" in l}
    assert {"run_site", "executor_main"} & syms, rep.stdout[:3000]
    assert any(s.startswith("site") for s in syms), syms  # the patched functions themselves
    # Registered text is the object's own mapping, never a memfd copy.  The one memfd left is
    # the out-of-line slot arena (inline renderings that trapping threads run, docs/protocol.md),
    # which perf may sample while a batch is live.
    stray = [l for l in rep.stdout.splitlines() if "memfd" in l and "pvpatch-slots" not in l]
    assert not stray, stray


def _tracefs(tmp_path):
    """A tracefs with uprobe_events: the usual one, or one mounted for this test (root)."""
    for d in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        if os.path.exists(f"{d}/uprobe_events"):
            return d, None
    mnt = tmp_path / "tracefs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tracefs", "nodev", str(mnt)], capture_output=True,
                       text=True, timeout=30)
    if r.returncode != 0 or not (mnt / "uprobe_events").exists():
        pytest.skip(f"no tracefs with uprobe_events here: {r.stderr.strip()[:200]}")
    return str(mnt), str(mnt)


def _append(path, line):
    # os.write, not open(..., "a"): Python seeks to the end first, which tracefs refuses.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _file_offset(addr):
    with open("/proc/self/maps") as f:
        for line in f:
            fl = line.split()
            lo, hi = (int(x, 16) for x in fl[0].split("-"))
            if lo <= addr < hi:
                return fl[5], addr - lo + int(fl[2], 16)
    raise LookupError(hex(addr))


def test_uprobes_in_registered_code_count_every_call_and_leave_no_trace(tmp_path):
    """uprobes installed while the process runs, on pages pvpatch already wrote: they count
    every call, batches keep working, and removing them restores the file's bytes."""
    tracing, mounted = _tracefs(tmp_path)
    try:
        _uprobe_run(tmp_path, tracing)
    finally:
        if mounted:
            subprocess.run(["umount", mounted], timeout=30)


def _uprobe_run(tmp_path, tracing):
    g = next(g for g in pvpatch.core_module.desc.groups if g.name == "selftest")
    value_pv = next(o for o in g.ops if o.name == "value").impls[1].fn
    site0_fn = _core.selftest_sites()[0][0]
    so, off_pv = _file_offset(value_pv)
    _, off_s0 = _file_offset(site0_fn)
    group = f"pvpatch_t{os.getpid()}"
    probes = {"vpv": off_pv, "s0": off_s0}
    go, removed = tmp_path / "go", tmp_path / "removed"
    script = tmp_path / "target.py"
    script.write_text("import os, time\nimport pvpatch\nfrom pvpatch import _core\n" + FILE_BYTES
                      + textwrap.dedent(f"""
        fn, s0 = impl("value", "pv"), _core.selftest_sites()[0][0]
        pvpatch.runtime_patch({{"selftest": "alt"}})   # pages of the core written already
        print("ready", flush=True)
        deadline = time.monotonic() + 60
        while not os.path.exists({str(go)!r}) and time.monotonic() < deadline:
            time.sleep(0.005)
        pv_calls = 0
        for i in range(300):
            v = ("pv", "alt", "native")[i % 3]
            pvpatch.runtime_patch({{"selftest": v}})
            pv_calls += v == "pv"
            assert _core.selftest_call(0) == {{"pv": 0x1002, "alt": 0x1003, "native": 0x1001}}[v]
        print("calls", pv_calls, 300, flush=True)
        while not os.path.exists({str(removed)!r}) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert _core.read(fn, 6) == file_bytes(fn, 6), "a uprobe int3 stayed in value_pv"
        assert _core.read(s0, 4) == file_bytes(s0, 4), "a uprobe int3 stayed in site0"
        print("TARGET DONE", flush=True)
    """))
    events = f"{tracing}/uprobe_events"
    target, cleanup_errors = None, []
    try:
        with open(f"{tracing}/trace", "w"):
            pass  # clear
        for name, off in probes.items():
            _append(events, f"p:{group}/{name} {so}:{off:#x}\n")
        target = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        assert target.stdout.readline().strip() == "ready"
        for name in probes:  # installed now, into pages the process has written
            with open(f"{tracing}/events/{group}/{name}/enable", "w") as f:
                f.write("1")
        go.write_text("")
        line = target.stdout.readline().split()
        assert line and line[0] == "calls", line
        pv_calls, s0_calls = int(line[1]), int(line[2])
        for name in probes:
            with open(f"{tracing}/events/{group}/{name}/enable", "w") as f:
                f.write("0")
        with open(f"{tracing}/trace") as f:
            trace = f.read()
    finally:
        for name in probes:
            try:
                with open(f"{tracing}/events/{group}/{name}/enable", "w") as f:
                    f.write("0")
            except OSError:
                pass
            try:
                _append(events, f"-:{group}/{name}\n")
            except OSError as exc:  # never created, or still busy: say which
                cleanup_errors.append(f"{name}: {exc}")
        removed.write_text("")
        if target is not None:
            try:
                rest, err = target.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                target.kill()
                rest, err = target.communicate()
    assert target.returncode == 0, rest + err
    assert "TARGET DONE" in rest
    assert cleanup_errors == []
    pid = str(target.pid)
    # "python-1234   [001] ..... 12.34: vpv: (0x7f...)"
    hits = {n: sum(1 for l in trace.splitlines()
                   if f" {n}: (" in l and l.split()[0].endswith(f"-{pid}")) for n in probes}
    assert hits["vpv"] == pv_calls and hits["s0"] == s0_calls, (hits, trace[-2000:])
