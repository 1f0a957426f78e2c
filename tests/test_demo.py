"""The README's first command: the demo runs and shows the sample's grants."""

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_demo_shows_the_grants_of_the_sample_log(tmp_path: Path) -> None:
    # A copy, so that the test leaves no demo/ folder in the checkout.
    for part in ("scripts", "examples"):
        shutil.copytree(REPO / part, tmp_path / part)
    bin_dir = Path(sys.executable).parent
    done = subprocess.run(
        ["sh", "scripts/demo.sh"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    listed = [line.split()[0] for line in done.stdout.splitlines()[1:5]]
    assert listed == [
        "198.51.100.7",
        "198.51.100.41",
        "203.0.113.18",
        "2001:db8:1f0a::7",
    ]
    assert "203.0.113.66" not in done.stdout  # failed login
    assert "203.0.113.67" not in done.stdout  # forged text in a Postfix line
    if shutil.which("postmap", path="/usr/sbin:/usr/local/sbin"):
        # Postfix's map answers with the login's time: all digits, so OK.
        answer = done.stdout.rstrip().rsplit("198.51.100.7: ", 1)[1]
        assert answer.isdigit()
