"""Issue 8's Done-means run, short: `pvpatch selftest --nmi-level 3 --threads 8` with a thread
that blocks every signal around its site calls and a site-running handler installed with a full
mask.  Before the trap handler stopped needing SIGTRAP open, the first killed the process
(SIGTRAP with SIGTRAP blocked) or had every batch refused, the second killed it at the second
batch.  Here: PASS, 0 failures, the process alive, and the hostile threads really ran sites
while batches were running."""
import json
import signal
import subprocess
import sys

import pytest

DURATION = 4


def _selftest(*opts):
    cmd = [sys.executable, "-m", "pvpatch.cli", "selftest", "--duration", str(DURATION),
           "--nmi-level", "3", "--threads", "8", "--stall-timeout", "20", "--json", *opts]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=DURATION + 120)
    if out.returncode < 0:
        pytest.fail(f"selftest killed by {signal.Signals(-out.returncode).name}: "
                    f"{' '.join(cmd)}\n{out.stderr[-3000:]}")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(out.stdout)


@pytest.mark.parametrize("opts", [("--sigblock-thread",), ("--fullmask-handler",),
                                  ("--hostile",)], ids=lambda o: " ".join(o))
def test_selftest_with_signals_blocked_passes(opts):
    res = _selftest(*opts)
    assert res["ok"] and res["failures"] == 0 and not res["stalled"], res
    assert res["errors"] == []
    assert res["batches"] > 50 and res["traps"] > 0
    if res["sigblock_thread"]:
        assert res["sigblock_calls"] > 1000
    if res["fullmask_handler"]:
        assert res["handler_site_calls"] > 100
        assert res["handler_runs_sigtrap_blocked"] == res["signals"]
