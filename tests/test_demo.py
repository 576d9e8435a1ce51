"""`pvpatch demo --quick`, the README's first command, end to end."""
import re
import subprocess
import sys


def test_demo_quick():
    out = subprocess.run([sys.executable, "-m", "pvpatch.cli", "demo", "--quick"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    for step in ("== 1. the sites", "== 2. switching under fire", "== 3. the same lock",
                 "== 4. host hints"):
        assert step in text
    assert "failures: 0" in text
    assert "-> lock pv (publication to switch complete" in text
    assert "every invariant held" in text
    # Ratios with the precision they have: three significant figures, whole numbers from 1,000.
    assert re.search(r"pv/native (\d{1,3}(,\d{3})+|\d+(\.\d+)?)x$", text, re.M), text
    assert re.search(r"native/pv \d+(\.\d+)?x$", text, re.M), text


def test_busy_note():
    from pvpatch.demo import busy_note

    assert busy_note(0.5, 2, 0.0) is None
    assert busy_note(2.0, 2, None) is None
    assert "load average 4.9 on 2 CPUs" in busy_note(4.9, 2, None)
    note = busy_note(1.0, 2, 7.4)
    assert "7% of CPU time stolen" in note and "measured anyway" in note


def test_ratio_precision():
    from pvpatch.torture import format_ratio

    assert [format_ratio(x) for x in (1201995.39, 28.44, 1.3812, 0.7391, 0.03, 2.2345e-06)] == \
        ["1,201,995x", "28.4x", "1.38x", "0.739x", "0.03x", "0.00000223x"]


def test_the_sites_step_without_capstone():
    code = ("import sys; sys.modules['capstone'] = None; import pvpatch.demo as d; "
            "sys.exit(0 if d._sites() else 1)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "(no disassembly: disassembly needs capstone" in p.stdout
    assert "pip install 'pvpatch[disasm]'" in p.stdout
    assert "lock.unlock at 0x" in p.stdout
