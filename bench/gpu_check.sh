#!/usr/bin/env bash
# GPU check of issue 15, for one GPU from a source checkout (no installation, no network):
#   OUT=/some/dir bash bench/gpu_check.sh
# Prints crystals/s of the reference and the fused training step at paper width (256, 4 ALIGNN +
# 4 GCN layers, batch 64), GPU memory, and a short real training's val/test MAE
# (bench/gpu_check.py); results go to $OUT/gpu_check.json and $OUT/gpu_check.txt. Needs the real data
# files in ../shared/data or shared/data (or DATA=<folder>): jarvis_dft3d_2021_tiny.jsonl,
# jarvis_dft3d_2021_structures.jsonl.gz, jarvis_dft3d_2021_targets_splits.csv.gz.
# Everything is bounded by a 470 s timeout (the check must end within 8 minutes).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$ROOT/gpu_check_out}"
mkdir -p "$OUT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
DATA_ARGS=()
if [[ -n "${DATA:-}" ]]; then DATA_ARGS=(--data "$DATA"); fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: not available"
  "$PY" -c "import torch, torch_geometric; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'pyg', torch_geometric.__version__)"
  timeout 470 "$PY" "$ROOT/bench/gpu_check.py" --out "$OUT" "${DATA_ARGS[@]}"
} 2>&1 | tee "$OUT/gpu_check.txt"
