"""The lock-switching model: the protocol as written passes, and each piece of it is needed.

Every configuration `python -m pvpatch.model --protocol lock` checks runs here, one with
reduced bounds (CONFIGS_CI: two acquisitions per thread through one switch instead of two);
docs/locks.md has the state counts of both.
"""
import json
import subprocess
import sys

import pytest

from pvpatch import explore, model_lock

CONFIGS_CI = dict(model_lock.CONFIGS)
_TWO = "2 threads, 2 acquisitions each, native -> pv -> native"
CONFIGS_CI[_TWO] = dict(CONFIGS_CI[_TWO], switches=1)   # 55,180 states instead of 434,023


@pytest.mark.parametrize("name", list(CONFIGS_CI))
def test_protocol_is_safe_and_live(name):
    r = model_lock.check(**CONFIGS_CI[name])
    assert r.ok, r.violations
    assert r.states > 1000  # it really explored the interleavings


# The words docs/locks.md uses for the step each mutation breaks; its trace must show it.
WORDS = {
    "skip_hybrid": ["mode = PV", "inline movb $0"],
    # a fast path whose reads of pending and the tail came before the pending owner's bit
    "plain_store_handover": ["plain store", "fast path: CAS locked 0 -> LOCKED"],
    "no_dekker_head": ["before registering", "mode = HYBRID", "FUTEX_WAIT on lock 0's word"],
    "no_dekker_grace": ["grace period: reads", "mode = HYBRID", "inline movb $0"],
    "mode_pv_early": ["mode = PV", "sleepy = (mode == PV) = True", "inline movb $0"],
    "skip_grace": ["mode = HYBRID", 'apply("native")', "inline movb $0"],
    "sleep_without_slow": ["does not mark SLOW", "FUTEX_WAIT on lock 0's word {LOCKED"],
    "commit_before_batch": ["commits the record = 'hybrid' (before the batch)",
                            "KeyboardInterrupt", "mode = PV", "inline movb $0"],
    "fast_path_store": ["fast path: reads the tail empty", "plain store locked = LOCKED"],
    "trust_record": ["KeyboardInterrupt", "record says 'hybrid', no batch", "mode = PV",
                     "inline movb $0"],
}


@pytest.mark.parametrize("mutation", list(model_lock.MUTATIONS))
def test_every_piece_is_needed(mutation):
    r = model_lock.check(mutation=mutation, **model_lock.MUTATION_CONFIGS[mutation])
    assert not r.ok
    what, steps = r.violations[0]
    assert what.startswith(("lost wake-up", "mutual exclusion broken")), what
    assert steps and steps[-1] == what  # with the trace that leads there
    text = "\n".join(steps)
    for word in WORDS[mutation]:
        assert word in text, (word, steps)


def test_every_mutation_has_a_config_and_words():
    assert set(model_lock.MUTATIONS) == set(model_lock.MUTATION_CONFIGS) == set(WORDS)


def test_trust_record_is_the_code_before_the_resync_and_the_resync_fixes_it():
    cfg = model_lock.MUTATION_CONFIGS["trust_record"]
    assert not model_lock.check(mutation="trust_record", **cfg).ok
    assert model_lock.check(**cfg).ok


def test_symmetry_reduction_keeps_the_verdict_and_saves_states():
    full = model_lock.check(threads=2, symmetry=False)
    reduced = model_lock.check(threads=2, symmetry=True)
    assert full.ok and reduced.ok
    assert reduced.states < full.states
    bad_full = model_lock.check(threads=2, symmetry=False, mutation="skip_grace")
    bad = model_lock.check(threads=2, symmetry=True, mutation="skip_grace")
    assert not bad_full.ok and not bad.ok


def test_traces_name_threads_consistently_under_symmetry():
    # The trace is replayed on concrete states: the sleeper named in the verdict is the thread
    # the trace put to sleep.
    r = model_lock.check(threads=3, switches=1, mutation="mode_pv_early", aborts=0)
    what, steps = r.violations[0]
    sleeper = what.split()[2]  # "lost wake-up: Tn sleeps ..."
    assert any(s.startswith(f"{sleeper}: FUTEX_WAIT on lock 0's word") for s in steps), steps


def test_explorer_reports_a_run_that_can_never_end():
    # A two-state loop next to the end: safe, never stuck, but from "spin" there is no way out.
    succ = {"start": [("a", "end"), ("b", "spin")], "spin": [("c", "spin2")],
            "spin2": [("d", "spin")], "end": []}
    r = explore.explore("start", lambda s: succ[s], liveness=True)
    assert not r.ok and "unreachable" in r.violations[0][0]
    assert r.violations[0][1][:1] == ["b"]
    assert explore.explore("start", lambda s: succ[s], liveness=False).ok


def test_bad_arguments():
    with pytest.raises(ValueError, match="known: skip_hybrid"):
        model_lock.check(mutation="nope")
    with pytest.raises(ValueError, match="start must be native or pv"):
        model_lock.check(start="hybrid")
    with pytest.raises(ValueError, match="threads 0: must be 1..4"):
        model_lock.check(threads=0)
    rc, out, err = _cli("--protocol", "lock", "--threads", "1", "--signal")
    assert rc == 2 and "signal: needs 2 threads" in err and "Traceback" not in err


def _cli(*args):
    p = subprocess.run([sys.executable, "-m", "pvpatch.model", *args], capture_output=True,
                       text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def test_cli_json_for_a_mutation_and_for_the_batch_model():
    rc, out, err = _cli("--protocol", "lock", "--mutation", "skip_grace", "--json")
    assert rc == 1, err
    d = json.loads(out)
    assert d["ok"] is False and d["mutation"] == "skip_grace" and d["states"] > 0
    assert d["violations"][0]["what"].startswith("lost wake-up")
    assert d["violations"][0]["trace"][-1] == d["violations"][0]["what"]
    rc, out, err = _cli("--protocol", "lock", "--threads", "2", "--switches", "1", "--json")
    assert rc == 0, err
    d = json.loads(out)
    assert d["ok"] is True and d["violations"] == [] and d["mutation"] is None
    rc, out, err = _cli("--executors", "1", "--batches", "1", "--executions", "1", "--json")
    assert rc == 0, err
    d = json.loads(out)
    assert d["ok"] and d["states"] > 0 and d["mutation"] is None and d["violations"] == []


def test_cli_prints_a_readable_trace():
    rc, out, err = _cli("--protocol", "lock", "--mutation", "no_dekker_head")
    assert rc == 1, err
    assert "VIOLATION: lost wake-up" in out
    assert "switcher (-> native): mode = HYBRID" in out
