"""hostd settings: defaults < TOML file (--config) < flags; bad settings change nothing.  The
files in examples/hostd/ are checked against the real parser so that they cannot rot."""
from __future__ import annotations

import os
import shlex

import pytest

from pvpatch.cli import build_parser
from pvpatch.cli.hostd import settings
from pvpatch.errors import PvpatchError
from pvpatch.hints.publisher import Decider, Thresholds

from hints_util import cli

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples", "hostd")
EXAMPLE_TOML = os.path.join(EXAMPLES, "hostd.toml")


def parse(*argv):
    return settings(build_parser().parse_args(["hostd", *map(str, argv)]))


def test_example_config_holds_the_defaults():
    conf, t = parse("--config", EXAMPLE_TOML)
    assert t == Thresholds()
    assert conf == {"path": "/run/pvpatch/hints", "interval": 1.0, "metrics_port": None,
                    "metrics_addr": "127.0.0.1"}


def test_example_systemd_unit_runs_a_command_the_parser_accepts():
    unit = open(os.path.join(EXAMPLES, "pvpatch-hostd.service")).read()
    (line,) = [ln for ln in unit.splitlines() if ln.startswith("ExecStart=")]
    argv = shlex.split(line.split("=", 1)[1])
    assert os.path.basename(argv[0]) == "pvpatch" and argv[1] == "hostd"
    args = build_parser().parse_args(argv[1:])
    assert args.config == "/etc/pvpatch/hostd.toml"
    assert "RuntimeDirectory=pvpatch" in unit and "RuntimeDirectoryMode=0755" in unit


def test_flags_override_the_file_and_reach_the_decision(tmp_path):
    f = tmp_path / "h.toml"
    f.write_text('interval = 0.5\nmetrics_port = 0\n[thresholds]\nsteal_enter = 30\n'
                 'runnable_per_cpu_enter = 2.0\nenter_samples = 1\n')
    conf, t = parse("--config", f, "--interval", "0.25", "--steal-leave", "7")
    assert conf["interval"] == 0.25 and conf["metrics_port"] == 0
    assert (t.steal_enter, t.steal_leave, t.runnable_per_cpu_enter, t.enter_samples) == \
        (30.0, 7.0, 2.0, 1)
    d = Decider(t)
    d.oversubscribed = False
    calm = {"online_cpus": 2, "runnable": 3, "steal": 2500, "psi_some_avg10": 0,
            "cg_throttled": 0}
    assert d.update(calm) is True  # 3 runnable on 2 CPUs: under 2 per CPU; steal 25 % < 30 %
    assert d.update(dict(calm, runnable=5)) is False  # 2.5 per CPU, one sample enough


@pytest.mark.parametrize("text,frag", [
    ("colour = 1\n", "colour: unknown key"),
    ("[thresholds]\nsteal = 3\n", "thresholds.steal: unknown"),
    ("interval = 'fast'\n", "interval: 'fast' is not a number"),
    ("[thresholds]\nenter_samples = 1.5\n", "enter_samples: 1.5 is not an integer"),
    ("[thresholds]\nsteal_enter = 3\nsteal_leave = 5\n", "steal-leave 5 is above steal-enter 3"),
    ("[thresholds]\npsi_enter = 300\n", "psi-enter 300.0: a percentage"),
    ("[thresholds]\nleave_samples = 0\n", "leave-samples 0"),
    ("[thresholds]\nrunnable_per_cpu_leave = nan\n", "runnable-per-cpu-leave nan"),
    ("interval = [\n", "not TOML"),
])
def test_bad_config_is_refused_naming_the_key(tmp_path, text, frag):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(PvpatchError, match=frag.replace("[", r"\[")):
        parse("--config", f)


@pytest.mark.parametrize("args,frag", [
    (["--psi-leave", "30"], "psi-leave 30"),
    (["--enter-samples", "0"], "enter-samples 0"),
    (["--steal-enter", "-1"], "steal-enter -1"),
    (["--config", "/nonexistent/missing.toml"], "missing.toml"),
])
def test_bad_threshold_flags_are_refused(args, frag):
    with pytest.raises(PvpatchError, match=frag):
        parse(*args)
    with pytest.raises(PvpatchError):
        Thresholds(steal_enter=float("inf")).check()


def test_hostd_with_bad_settings_exits_2_and_creates_nothing(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[thresholds]\nsteal_enter = 3\nsteal_leave = 5\n")
    page = tmp_path / "hints"
    for args, frag in ((["--config", f], "steal-leave 5 is above steal-enter 3"),
                       (["--metrics-port", "70000"], "70000"),
                       (["--metrics-port", "0", "--metrics-addr", "999.1.1.1"],
                        "999.1.1.1:0: cannot listen")):
        r = cli("hostd", "--path", page, "--duration", "1", *args)
        assert r.returncode == 2 and frag in r.stderr, (args, r.stderr)
        assert not page.exists()
        assert sorted(os.listdir(tmp_path)) == ["bad.toml"]
