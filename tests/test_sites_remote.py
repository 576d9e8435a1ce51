"""`pvpatch sites --import MODULE` and `pvpatch sites --pid PID` against real processes: a
second Python process with pvpatch's core and a registered extension (examples/demo_ext),
switched while we read it; a process that loaded the extension without pvpatch; a process
without pvpatch at all; a dead pid; a process we may not read."""
import ctypes
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import pytest

import pvpatch

HERE = os.path.dirname(__file__)
DEMO = os.path.join(HERE, "..", "examples", "demo_ext", "demo.c")
KEY = ("module", "section", "address", "length", "group", "op", "variant", "kind", "bytes")


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo_remote")
    out = d / ("demo" + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-fvisibility=hidden",
                    f"-I{sysconfig.get_paths()['include']}", f"-I{pvpatch.get_include()}", DEMO,
                    "-o", str(out)], check=True, timeout=120)
    return str(d)


def run_cli(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "pvpatch.cli", "sites", *args],
                          capture_output=True, text=True, timeout=120, env=env, **kw)


# The other process: registers demo, then obeys "switch GROUP VARIANT" and "rows" lines on
# stdin, answering each with one JSON line; exits at EOF, or after 120 s whatever happens.
CHILD = textwrap.dedent(r"""
    import ctypes, json, signal, sys
    signal.alarm(120)
    sys.path.insert(0, sys.argv[1])
    mode = sys.argv[2]
    if mode == "nondumpable":
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)          # PR_SET_DUMPABLE 0
    import demo
    if mode != "unregistered":
        import pvpatch
        from pvpatch.cli.sites import site_rows
        pvpatch.register_module(demo)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "switch":
            pvpatch.runtime_patch({cmd[1]: cmd[2]})
            print(json.dumps({"ok": True}), flush=True)
        elif cmd[0] == "rows":
            print(json.dumps(site_rows()), flush=True)
        elif cmd[0] == "storm":             # switch demo and selftest until "join"
            import threading
            done = threading.Event()
            count = [0]
            def storm():
                while not done.is_set():
                    v = ("pv", "native")[count[0] % 2]
                    pvpatch.runtime_patch({"demo": v, "selftest": v})
                    count[0] += 1
            t = threading.Thread(target=storm)
            t.start()
            print(json.dumps({"ok": True}), flush=True)
        elif cmd[0] == "join":
            done.set()
            t.join(60)
            print(json.dumps({"alive": t.is_alive(), "switches": count[0]}), flush=True)
""")


class Child:
    def __init__(self, demo_dir, mode="registered"):
        self.p = subprocess.Popen([sys.executable, "-c", CHILD, demo_dir, mode],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert json.loads(self.p.stdout.readline()) == {"ready": True}
        self.pid = self.p.pid

    def ask(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        return json.loads(self.p.stdout.readline())

    def close(self):
        self.p.stdin.close()
        try:
            self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


@pytest.fixture
def child(demo_dir):
    c = Child(demo_dir)
    yield c
    c.close()


def remote(pid, *extra):
    r = run_cli("--pid", str(pid), "--json", *extra)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def keyed(rows):
    return sorted(tuple(r[k] for k in KEY) for r in rows)


def test_pid_reads_what_the_process_itself_sees(child):
    for switch in (None, "switch demo pv", "switch selftest pv", "switch lock pv",
                   "switch demo native", "switch lock native"):
        if switch:
            assert child.ask(switch) == {"ok": True}
        mine = child.ask("rows")
        theirs = remote(child.pid)
        assert keyed(theirs) == keyed(mine), switch
        assert all(r["registered"] for r in theirs)
    demo_rows = [r for r in theirs if r["module"] == "demo"]
    assert {(r["op"], r["variant"], r["kind"]) for r in demo_rows} == \
        {("scale", "native", "call"), ("clear", "native", "inline")}
    assert {r["module"] for r in theirs} == {"demo", "pvpatch._core"}


def test_pid_while_the_process_switches(child):
    """Reads taken while the other process switches without pause: every site is one of its
    group's variants or caught mid-batch (int3 first), never unreadable, never unknown."""
    child.ask("storm")
    seen = set()
    for _ in range(15):
        r = run_cli("--pid", str(child.pid), "--json", "--disasm")
        assert r.returncode == 0, r.stderr
        for row in json.loads(r.stdout):
            if row["group"] in ("demo", "selftest") and row["section"] == "runtime":
                assert row["variant"] in ("pv", "native", "patching") or \
                    set(row["variant"].split("|")) <= {"pv", "native"}, row
                seen.add(row["variant"])
    joined = child.ask("join")
    assert not joined["alive"] and joined["switches"] > 15, joined
    assert {"pv", "native"} <= seen, seen


def test_pid_disasm(child):
    child.ask("switch demo pv")
    rows = remote(child.pid, "--disasm")
    for r in rows:
        if r["kind"] == "call":
            assert r["disasm"].startswith("call"), r
        elif r["kind"] == "nop":
            assert r["disasm"].startswith("nop"), r
    text = run_cli("--pid", str(child.pid), "--disasm").stdout
    assert "demo.scale" in text and "callq" in text


def test_pid_of_a_process_that_did_not_register(demo_dir):
    c = Child(demo_dir, "unregistered")
    try:
        rows = remote(c.pid)
    finally:
        c.close()
    assert rows and {r["module"] for r in rows} == {"demo"}
    assert all(r["variant"] == r["kind"] == "default" and not r["registered"] for r in rows)


def test_pid_after_the_file_was_deleted(demo_dir, tmp_path):
    """An extension rebuilt or removed while the process runs: its mapping still says what it
    is (read through /proc/PID/map_files)."""
    d = tmp_path / "copy"
    d.mkdir()
    name = next(n for n in os.listdir(demo_dir) if n.startswith("demo"))
    shutil.copy(os.path.join(demo_dir, name), d / name)
    c = Child(str(d), "registered")
    try:
        c.ask("switch demo pv")
        os.unlink(d / name)
        rows = remote(c.pid)
    finally:
        c.close()
    demo_rows = [r for r in rows if r["module"] == "demo"]
    assert {(r["op"], r["variant"]) for r in demo_rows} == {("scale", "pv"), ("clear", "pv")}


def test_pid_errors():
    dead = subprocess.Popen(["true"])
    dead.wait()
    r = run_cli("--pid", str(dead.pid))
    assert r.returncode == 2 and f"no process with pid {dead.pid}" in r.stderr, r.stderr
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        r = run_cli("--pid", str(sleeper.pid))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert r.returncode == 2, r.stderr
    assert f"process {sleeper.pid} (sleep) maps no object with pvpatch sites" in r.stderr
    r = run_cli("--pid", "0")
    assert r.returncode == 2 and "argument --pid: 0 is out of range" in r.stderr, r.stderr
    r = run_cli("--import", "")
    assert r.returncode == 2 and "argument --import: empty module name" in r.stderr, r.stderr
    r = run_cli("--pid", "1", "--import", "json")
    assert r.returncode == 2 and "--pid reads another process" in r.stderr


def _drop_ptrace_cap():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(24, 19, 0, 0, 0) != 0:  # PR_CAPBSET_DROP, CAP_SYS_PTRACE
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_pid_without_permission(demo_dir):
    """A process that is not dumpable may be read only with CAP_SYS_PTRACE: the reader runs
    without it (dropped from its bounding set, so the exec'd reader never has it)."""
    c = Child(demo_dir, "nondumpable")
    try:
        env = dict(os.environ)
        r = run_cli("--pid", str(c.pid), env=env,
                    preexec_fn=_drop_ptrace_cap if os.geteuid() == 0 else None)
    finally:
        c.close()
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert f"process {c.pid} (python" in r.stderr and "ptrace read access" in r.stderr, r.stderr
    assert "Permission denied" in r.stderr


def test_import_registers_and_lists(demo_dir):
    env = dict(os.environ, PYTHONPATH=demo_dir)
    r = run_cli("--import", "demo", "--import", "demo", "--import", "json", "--json", env=env)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    demo_rows = [x for x in rows if x["module"] == "demo"]
    assert {(x["op"], x["variant"], x["kind"]) for x in demo_rows} == \
        {("scale", "native", "call"), ("clear", "native", "inline")}
    r = run_cli("--import", "no_such_module_here", env=env)
    assert r.returncode == 2
    assert "--import no_such_module_here: No module named 'no_such_module_here'" in r.stderr
    # a module that registers itself on import is not registered twice
    r = run_cli("--import", "pvpatch._core", "--json")
    assert r.returncode == 0, r.stderr
