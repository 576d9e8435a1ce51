"""`pvpatch demo --quick`, the README's first command, end to end."""
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
