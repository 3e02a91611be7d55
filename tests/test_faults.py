"""The fault-injection pass (bench/fault_injection.py) runs in CI: every damaged or swapped artifact is refused."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_every_injected_fault_is_detected(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(REPO / "bench" / "fault_injection.py"), "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, env=env, check=False)
    found = re.search(r"^faults detected (\d+)/(\d+)$", done.stdout, re.MULTILINE)
    assert found, done.stdout[-3000:] + done.stderr[-3000:]
    assert found.group(1) == found.group(2) and int(found.group(2)) == 44, done.stdout
    assert done.returncode == 0
