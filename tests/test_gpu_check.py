"""The prepared GPU check (`bench/gpu_check.sh`) runs from the source checkout without the packages the GPU
machine lacks (pymatgen, polars, robocrys, snakemake): here through its CPU fallback at tiny sizes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Makes the packages absent on the GPU machine unimportable in the child process.
_BLOCKER = """
import importlib.abc, sys
MISSING = {"pymatgen", "polars", "robocrys", "snakemake"}
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in MISSING:
            raise ModuleNotFoundError(f"No module named {name!r} (absent on the GPU machine)")
sys.meta_path.insert(0, Missing())
"""


def test_gpu_check_runs_without_the_cpu_only_packages(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(_BLOCKER)
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable,
           "PYTHONPATH": str(tmp_path / "site")}
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=470, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    rates = result["throughput"]["crystals_per_s"]
    assert {"reference", "fused", "compiled"} <= set(rates) and min(rates.values()) > 0
    training = result["training"]
    assert training["epochs"] == 2 and math.isfinite(training["val_mae"]) and math.isfinite(training["test_mae"])
    assert math.isfinite(training["baseline_test_mae"]) and "constant baseline (training median)" in done.stdout
    assert "absent on the GPU machine" not in done.stdout
