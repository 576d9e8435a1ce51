"""The `pvpatch` command as a user meets it: every mistake is one line on stderr and exit 2,
nothing runs and nothing is written; a failure found by a run is exit 1; a closed pipe or a
machine out of threads is a quiet, clear end, never a traceback.

Every command runs in a subprocess with a timeout, so a hang is a failed test.
"""
import resource
import signal
import subprocess
import sys

import pytest

import pvpatch


def run(*args, timeout=60, **kw):
    return subprocess.run([sys.executable, "-m", "pvpatch", *args], capture_output=True,
                          text=True, timeout=timeout, **kw)


def one_line_error(p, status, alone=True):
    """The error line (stderr's last); `alone`: nothing else on stderr (a mistake is refused
    before anything runs; a run may have printed its header before it failed)."""
    assert "Traceback" not in p.stderr + p.stdout, p.stderr
    assert p.returncode == status, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.splitlines()
    assert lines and (len(lines) == 1 or not alone), p.stderr
    assert [ln for ln in lines if ln.startswith("pvpatch: error: ")] == lines[-1:], p.stderr
    return lines[-1]


# Every input the issue found crashing or accepted as nonsense, and the words the error must
# contain (the option at fault and what is allowed).
BAD = [
    (["selftest", "--threads", "-1"], "--threads: -1 is out of range: must be 1..64"),
    (["selftest", "--threads", "100000"], "--threads: 100000 is out of range"),
    (["selftest", "--threads", "0"], "--threads: 0 is out of range"),
    (["selftest", "--signal-hz", "-1"], "--signal-hz: -1 is out of range"),
    (["selftest", "--signal-hz", "nan"], "--signal-hz: nan is not a finite number"),
    (["selftest", "--duration", "-1"], "--duration: -1 s is out of range"),
    (["selftest", "--duration", "0"], "--duration: 0 s is out of range"),
    (["selftest", "--duration", "nan"], "--duration: nan is not a finite number"),
    (["selftest", "--stall-timeout", "0"], "--stall-timeout: 0 s is out of range"),
    (["selftest", "--nmi-level", "7"], "--nmi-level"),
    (["torture", "--pv-spin", "-1"], "--pv-spin: -1 is out of range: must be 0..16777216"),
    (["torture", "--pv-spin", "1e12"], "--pv-spin: 1000000000000 is out of range"),
    (["torture", "--rescue", "0"], "--rescue: 0 s is out of range: must be >= 0.001"),
    (["torture", "--rescue", "-1"], "--rescue: -1 s is out of range"),
    (["torture", "--rescue", "nan"], "--rescue: nan is not a finite number"),
    (["torture", "--hold-ns", "1e18"], "--hold-ns: 1000000000000000000 is out of range"),
    (["torture", "--writers", "-3"], "--writers: -3 is out of range: must be 0..1024"),
    (["torture", "--writers", "many"], "--writers: 'many' is not an integer"),
    (["torture", "--duration", "inf"], "--duration: inf is not a finite number"),
    (["torture", "--stat-interval", "1e-9"], "--stat-interval: 1e-09 s is out of range"),
    (["torture", "--toggle-every", "-1"], "--toggle-every: -1 s is out of range"),
    (["torture", "--stall-timeout", "0"], "--stall-timeout: 0 s is out of range"),
    (["torture", "--json", "/proc/x.json"], "--json: /proc/x.json: cannot be written"),
    (["torture", "--plot", "/proc/x.png"], "--plot: /proc/x.png: cannot be written"),
    (["torture", "--plot", "x.pdf"], "--plot: x.pdf: give a file name ending in .png or .svg"),
    (["torture", "--json", "/"], "--json: / is a directory"),
    (["torture", "--json", ""], "--json: empty file name"),
    (["torture", "--hints-path", ""], "--hints-path: empty path"),
    (["torture", "--mode", "bogus"], "--mode 'bogus': must be one of native, pv, auto, toggle"),
    (["torture", "--lock", "bakery"], "--lock 'bakery': must be one of pvpatch"),
    (["hostd", "--interval", "nan"], "--interval: nan is not a finite number"),
    (["hostd", "--interval", "inf"], "--interval: inf is not a finite number"),
    (["hostd", "--interval", "0"], "--interval: 0 s is out of range"),
    (["hostd", "--metrics-port", "70000"], "--metrics-port: 70000 is out of range: must be "
                                            "0..65535"),
    (["hostd", "--duration", "nan"], "--duration: nan is not a finite number"),
    (["hostd", "--simulate", ""], "--simulate: empty timeline"),
    (["hostd", "--simulate", "5:sideways"], "state 'sideways' is not one of"),
    (["hostd", "--path", ""], "--path: empty path"),
    (["hints", "--hints-path", ""], "--hints-path: empty path"),
    (["hints", "--watch", "--poll", "0"], "--poll: 0 s is out of range"),
    (["hints", "--watch", "--count", "0"], "--count: 0 is out of range"),
    (["bench", "nosuch"], "unknown suite(s) nosuch; known: patch, hints"),
    (["bench", "locks", "--writers", "2,x"], "--writers: 'x' is not an integer"),
    (["bench", "locks", "--seconds", "0"], "--seconds"),
    (["bench", "--repeat", "-2"], "--repeat: -2 is out of range"),
    (["nosuchcommand"], "invalid choice: 'nosuchcommand'"),
    ([], "the following arguments are required: COMMAND"),
    (["sites", "--bogus"], "unrecognized arguments: --bogus"),
]


@pytest.mark.parametrize("args,words", BAD, ids=[" ".join(a) or "(none)" for a, _ in BAD])
def test_every_mistake_is_one_line_and_exit_2(args, words):
    # --duration keeps a run short if a check ever let one through.
    extra = ["--duration", "0.2"] if args[:1] == ["torture"] and "--duration" not in args else []
    line = one_line_error(run(*args, *extra, timeout=30), 2)
    assert words in line


def test_a_refused_output_file_is_not_left_behind(tmp_path):
    js = tmp_path / "out.json"
    line = one_line_error(run("torture", "--json", str(js), "--writers", "-1"), 2)
    assert "--writers" in line
    assert not js.exists()
    keep = tmp_path / "keep.json"  # an existing file is neither truncated nor removed
    keep.write_text("precious")
    one_line_error(run("torture", "--json", str(keep), "--rescue", "nan"), 2)
    assert keep.read_text() == "precious"


def test_a_failure_found_by_a_run_is_exit_1():
    p = run("torture", "--writers", "2", "--mode", "native", "--hold-ns", "1500000000",
            "--duration", "4", "--stall-timeout", "0.5")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    assert "End of test: FAILURE" in p.stdout.splitlines()[-1]


@pytest.mark.parametrize("args", [["sites"], ["torture", "--writers", "2", "--duration", "5",
                                              "--stat-interval", "0.05"]])
def test_a_closed_pipe_ends_quietly(args):
    """`pvpatch sites | head`: the reader is gone before the first line; the command stops as a
    tool killed by SIGPIPE does (status 141), with nothing on stderr."""
    p = subprocess.Popen([sys.executable, "-m", "pvpatch", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    p.stdout.close()
    try:
        _, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        pytest.fail("the command did not stop after its stdout closed")
    assert p.returncode == 128 + signal.SIGPIPE, err
    assert err == "", err


def _low_address_space():
    # Enough to start Python and the core, not enough for 200 thread stacks.
    resource.setrlimit(resource.RLIMIT_STACK, (8 << 20, resource.RLIM_INFINITY))
    resource.setrlimit(resource.RLIMIT_AS, (400 << 20, 400 << 20))


@pytest.mark.parametrize("args", [["torture", "--writers", "200", "--duration", "1"],
                                  ["selftest", "--threads", "64", "--duration", "1"]])
def test_out_of_threads_is_a_clear_error(args):
    p = run(*args, preexec_fn=_low_address_space)
    line = one_line_error(p, 1, alone=False)
    assert "out of resources (pthread_create: Resource temporarily unavailable)" in line
    assert "ulimit" in line


def test_missing_extras_name_the_extra():
    """Without capstone / matplotlib (blocked in sys.modules): one line naming the extra, and
    torture refuses before it runs, not after."""
    code = ("import sys; sys.modules[sys.argv[1]] = None; from pvpatch.cli import main; "
            "sys.exit(main(sys.argv[2:]))")
    for mod, args, extra in (("capstone", ["sites", "--disasm"], "pvpatch[disasm]"),
                             ("matplotlib", ["torture", "--plot", "/tmp/x.png", "--duration",
                                             "30"], "pvpatch[plot]")):
        p = subprocess.run([sys.executable, "-c", code, mod, *args], capture_output=True,
                           text=True, timeout=20)
        line = one_line_error(p, 2)
        assert f"pip install '{extra}'" in line
        assert p.stdout == ""


def test_version_and_python_dash_m():
    p = run("--version")
    assert p.returncode == 0 and p.stdout.strip() == f"pvpatch {pvpatch.__version__}"
    p = run("sites", "--footprint")
    assert p.returncode == 0 and "bytes per site record" in p.stdout


def test_every_option_has_help():
    """No option left without a line in --help (argparse prints nothing after it then)."""
    from pvpatch.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        for a in p._actions:
            if a.dest != "help":
                assert a.help, f"pvpatch {name} {'/'.join(a.option_strings) or a.dest}"


def test_json_outputs_carry_a_schema_version():
    import json

    for args in (["sites", "--footprint", "--json"],
                 ["selftest", "--duration", "0.3", "--threads", "2", "--json"]):
        p = run(*args)
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["schema"] == 1, args
