"""runtime_patch's arguments are checked before anything happens, and only pvpatch's own
exceptions leave it, also while threads are born and die around it."""
import threading

import pytest

import pvpatch
from pvpatch import _core, patcher


@pytest.mark.parametrize("arg, match", [
    ("lock", r"mapping \{group: variant\}.*not str 'lock'.*did you mean"),
    (None, r"mapping \{group: variant\}.*not NoneType"),
    ([("selftest", "pv")], r"mapping \{group: variant\}.*not list"),
    ({1: "pv"}, r"group names are str, not int 1"),
    ({"selftest": None}, r"group 'selftest': the variant is a str name, not NoneType"),
    ({"selftest": b"pv"}, r"not bytes"),
])
def test_bad_arguments_are_named_and_change_nothing(selftest_native, arg, match):
    before = {s.addr: patcher.site_bytes(s) for s in pvpatch.core_module.sites}
    with pytest.raises(pvpatch.ArgumentError, match=match) as info:
        pvpatch.runtime_patch(arg)
    assert isinstance(info.value, TypeError) and isinstance(info.value, pvpatch.PvpatchError)
    assert {s.addr: patcher.site_bytes(s) for s in pvpatch.core_module.sites} == before


def test_hook_is_not_a_public_argument(selftest_native):
    with pytest.raises(pvpatch.ArgumentError, match="no keyword arguments, not hook"):
        pvpatch.runtime_patch({"selftest": "pv"}, hook=12345)  # would call that address
    assert pvpatch.current()["selftest"] == "native"


def test_unknown_names_are_registry_errors():
    with pytest.raises(pvpatch.RegistryError, match="unknown group 'nope'"):
        pvpatch.runtime_patch({"nope": "pv"})
    with pytest.raises(pvpatch.RegistryError, match="unknown variant"):
        pvpatch.runtime_patch({"selftest": "nope"})


def test_any_mapping_is_taken(selftest_native):
    class M(dict):
        pass
    pvpatch.runtime_patch(M(selftest="pv"))
    assert _core.selftest_call(0) == 0x1002


def test_thread_churn_lets_only_pvpatch_errors_out(selftest_native):
    """Threads start and exit as fast as they can while runtime_patch runs."""
    stop = threading.Event()

    def churn():
        while not stop.is_set():
            ts = [threading.Thread(target=lambda: None) for _ in range(8)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(5)

    churners = [threading.Thread(target=churn) for _ in range(2)]
    for t in churners:
        t.start()
    foreign, ours, ok = [], [], 0
    try:
        for i in range(1500):
            try:
                pvpatch.runtime_patch({"selftest": ("pv", "alt", "native")[i % 3]})
                ok += 1
            except pvpatch.PvpatchError as exc:
                ours.append(exc)
            except Exception as exc:  # the finding
                foreign.append(repr(exc))
    finally:
        stop.set()
        for t in churners:
            t.join(10)
    assert foreign == []
    assert ok > 0
