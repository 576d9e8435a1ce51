"""The protocol model: the protocol as written passes, and each piece of it is needed."""
import pytest

from pvpatch import model


def test_protocol_has_no_torn_execution_and_never_sticks():
    r = model.check(executors=2, batches=2, executions=2)
    assert r.ok, r.violations
    assert r.states > 100_000  # it really explored the interleavings


def test_three_batches_one_thread():
    r = model.check(executors=1, batches=3, executions=3)
    assert r.ok, r.violations


@pytest.mark.parametrize("mutation", model.MUTATIONS)
def test_every_piece_is_needed(mutation):
    r = model.check(executors=2, batches=2, executions=2, mutation=mutation)
    assert not r.ok
    what, steps = r.violations[0]
    assert "torn" in what or "read back" in what
    assert steps and steps[-1] == what  # with the trace that leads there


def test_unknown_mutation():
    with pytest.raises(ValueError, match="known: no_sync1"):
        model.check(mutation="nope")
