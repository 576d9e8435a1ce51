"""The site ABI of include/pvpatch.h under every compiler and flag set an extension author may
use: a two-file extension with its own group (tests/matrix_ext: inline, NOP and call renderings,
runtime and boot sites, CALL0..3 and BOOT_CALL0..3), built with gcc and clang at -O0/-O2/-O3,
with and without frame pointers, with -flto and with -march=native, each run in a fresh process
before registration and under every variant.  Checked per build:

- results of every site, argument evaluation order (PVPATCH_CALL2(r, add, 6, 0, 1, twice(20))
  is 41 + the variant's offset; CALL3's arguments are evaluated once each, in order);
- the stack is 16-byte aligned at the site (leaf, shrink-wrapping candidate, VLA, loop,
  over-aligned locals) and a leaf function's locals survive the call (no red zone use);
- values live across a site whose op overwrites every caller-saved register (x87 stack,
  upper halves, AVX-512 zmm16-31 and k0-7 when the CPU has them) are intact, scalars and 18
  vector values of the file's widest ISA (more than xmm0-15 hold).  Measured: with gcc 12 and
  clang 14 the vectors are spilled around the site even when the header omits xmm16-31 from
  its clobbers (the never-taken abort() call of the non-leaf marker already forces it), so that
  check guards the clobber list without being able to tell it apart today;
- backtrace() and libunwind, called inside an op, pass through the site's return address and
  reach the interpreter; pthread_cancel of a thread sleeping in an op unwinds and runs its
  cleanup handler.

gdb's backtrace through a site is checked for a reduced set (three builds), as gdb is slow to
start.  The matrix is 21 builds, about 25 s on two idle cores.
"""
import json
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

import pvpatch

HERE = os.path.dirname(__file__)
EXT = os.path.join(HERE, "matrix_ext")
CHILD = os.path.join(HERE, "matrix_child.py")

FLAGSETS = [
    "-O0 -fno-omit-frame-pointer", "-O0 -fomit-frame-pointer",
    "-O2 -fno-omit-frame-pointer", "-O2 -fomit-frame-pointer",
    "-O3 -fno-omit-frame-pointer", "-O3 -fomit-frame-pointer",
    "-O2 -flto -fno-omit-frame-pointer", "-O3 -flto -fomit-frame-pointer",
    "-O2 -march=native", "-O3 -flto -march=native -fomit-frame-pointer",
]
CONFIGS = [("gcc", f) for f in FLAGSETS + ["-O2 -fexceptions -fomit-frame-pointer"]] + \
    [("clang", f) for f in FLAGSETS]
OFFSET = {"default": 0, "native": 0, "pv": 100, "alt": 200}
MIX3 = {"default": 0, "native": 0, "pv": 1, "alt": 2}
MARK = {"default": 0, "native": 0, "pv": 2, "alt": 4}  # two sites; native renders as a NOP


def _has_libunwind(cc):
    probe = subprocess.run([cc, "-E", "-x", "c", "-"], input="#include <libunwind.h>\n",
                           capture_output=True, text=True, timeout=60)
    return probe.returncode == 0


def _ident(cc, flags):
    return cc + "_" + "".join(c if c.isalnum() else "_" for c in flags.replace("-", ""))


def build(cc, flags, outdir):
    if shutil.which(cc) is None:
        pytest.skip(f"{cc} is not installed (.ci/run installs it with apt-get)")
    name = "mx_" + _ident(cc, flags)
    out = os.path.join(outdir, name + sysconfig.get_config_var("EXT_SUFFIX"))
    # Not with -fexceptions: libunwind.so exports its own _Unwind_* (the GCC unwinder's API),
    # which then replace libgcc's in the landing pads of the cleanup handlers, a mix of two
    # unwinders that loses the cleanup (with or without sites).
    extra = ["-DMX_LIBUNWIND"] if _has_libunwind(cc) and "-fexceptions" not in flags else []
    libs = ["-lunwind"] if extra else []
    cmd = [cc, *flags.split(), "-shared", "-fPIC", "-fvisibility=hidden", "-Wall", "-Werror",
           f"-DMX_MOD={name}", *extra, f"-I{sysconfig.get_paths()['include']}",
           f"-I{pvpatch.get_include()}", f"-I{EXT}", os.path.join(EXT, "mx_ops.c"),
           os.path.join(EXT, "mx_sites.c"), "-o", out, *libs]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr}"
    return out, name


def run_child(path, name):
    r = subprocess.run([sys.executable, CHILD, path, name], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, f"{name}: exit {r.returncode}\n{r.stderr[-3000:]}"
    return json.loads(r.stdout)


def check_snapshot(tag, v, snap, so_path):
    res, off = snap["results"], OFFSET[v]
    assert res["add"] == 42 + off and res["add9"] == 2 + off, (tag, res)
    assert res["order2"] == 41 + off, (tag, "arguments evaluated out of order", res)
    assert res["order3"] == 1 + 4 * 1000 + 3 * 1000000 + MIX3[v], (tag, res)
    assert res["order3_log"] == [1, 2, 3] and res["order3_n"] == 3, (tag, res)
    assert res["mark"] == MARK[v], (tag, res)
    assert res["align"] == [0] * 6, (tag, "misaligned stack or red zone overwritten", res)
    assert res["live"][0] == res["live"][1], (tag, "a value live across a site was clobbered")
    assert res["regs"][0] == res["regs"][1], (tag, "a register the site clobbers was trusted")
    assert res["boot"] == [0, 0, 7, 3002001], (tag, res)
    for how, bt in snap["bt"].items():
        assert "error" not in bt, (tag, how, bt)
        frames, objects = bt["frames"], bt["objects"]
        hits = [i for i, a in enumerate(frames) if a in bt["site_ends"]]
        assert hits, (tag, how, "the site's return address is not in the backtrace",
                      [hex(a) for a in frames])
        beyond = [os.path.basename(o) for o in objects[hits[0] + 1:]]
        assert any(b.startswith(("python", "libpython")) for b in beyond), \
            (tag, how, "the backtrace stops at the site", list(zip(map(hex, frames), objects)))
    assert snap["cancel"] == ["cancelled", 1], (tag, snap["cancel"])


@pytest.mark.parametrize("cc,flags", CONFIGS, ids=[_ident(c, f) for c, f in CONFIGS])
def test_matrix(cc, flags, tmp_path):
    path, name = build(cc, flags, str(tmp_path))
    report = run_child(path, name)
    assert report["kinds"]["add"] == ["call", "inline"]
    assert report["kinds"]["mark"] == ["call", "inline", "nop"]
    for v in ("default", "native", "pv", "alt"):
        check_snapshot(f"{cc} {flags} [{v}]", v, report[v], path)


def test_libunwind_is_there():
    if not _has_libunwind("gcc"):
        pytest.skip("libunwind.h missing (.ci/run installs libunwind-dev): the matrix checks "
                    "backtrace() only")


GDB_CONFIGS = [("gcc", "-O0 -fno-omit-frame-pointer"), ("gcc", "-O2 -fomit-frame-pointer"),
               ("clang", "-O3 -fomit-frame-pointer")]
GDB_SCRIPT = """
import importlib.util, sys, pvpatch
spec = importlib.util.spec_from_file_location(sys.argv[2], sys.argv[1])
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
mod.bt(2)                       # default rendering: call *slot(%rip)
pvpatch.register_module(mod)
pvpatch.runtime_patch({"mx": "pv"})
mod.bt(2)                       # call rendering: call rel32
pvpatch.runtime_patch({"mx": "native"})
"""


@pytest.mark.parametrize("cc,flags", GDB_CONFIGS, ids=[_ident(c, f) for c, f in GDB_CONFIGS])
def test_gdb_backtrace_through_site(cc, flags, tmp_path):
    if shutil.which("gdb") is None:
        pytest.skip("gdb is not installed (.ci/run installs it with apt-get)")
    path, name = build(cc, flags, str(tmp_path))
    script = tmp_path / "stop.py"
    script.write_text(GDB_SCRIPT)
    cmd = ["gdb", "-nx", "-batch", "-ex", "set auto-load safe-path /",
           "-ex", "handle SIGUSR1 stop print nopass",
           "-ex", "run", "-ex", "bt", "-ex", "continue", "-ex", "bt", "-ex", "continue",
           "--args", sys.executable, str(script), path, name]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    out = r.stdout
    stops = out.split("received signal SIGUSR1")[1:]
    assert len(stops) == 2, out[-4000:]
    for stop in stops:
        bt = [line for line in stop.splitlines() if line.startswith("#")]
        text = "\n".join(bt)
        order = [next((i for i, l in enumerate(bt) if f" {fn} " in l or f" {fn}(" in l), None)
                 for fn in ("bt_fn", "mx_bt_site", "py_bt")]
        assert None not in order and order == sorted(order), text
        assert order[2] == order[1] + 1 and order[1] == order[0] + 1, text
        assert "Backtrace stopped" not in stop.split("Continuing")[0], text
        assert len(bt) > order[2] + 3, text  # and on into the interpreter
    assert "exited normally" in out, out[-2000:]
