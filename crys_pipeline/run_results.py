"""A finished training run as its readers need it: summary, per-epoch metrics and test predictions.

Torch-free. The tables, the comparisons and the report read runs through ``load_run_result``, which checks
the run's files against the sha256 its summary.json records, so every reader judges the same, intact
predictions. ``aligned_errors`` aligns the test predictions of several runs by material id for the paired
intervals of ``crys_pipeline.evidence``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crys_pipeline.io import read_json, read_jsonl, read_parquet, verify_files
from crys_pipeline.run_id import RunId
from crys_pipeline.schemas import RUN_SUMMARY

PropertyKey = tuple[str, str, str]  # (source, regime, target)


@dataclass(frozen=True)
class RunResult:
    """One finished training run.

    Attributes:
        path: its summary.json.
        summary: the summary (layout ``schemas.RUN_SUMMARY``).
        metrics: one dict per epoch from metrics.jsonl (epoch, val_mae, test_mae, ...).
        test_ids: material ids of the test split, in the file's order.
        y_true: float64 [n_test] targets of those materials.
        y_pred: float64 [n_test] the val-selected model's predictions.
    """

    path: Path
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]
    test_ids: list[str]
    y_true: np.ndarray
    y_pred: np.ndarray

    @property
    def id(self) -> RunId:
        """Which run: (source, target, variant, regime, seed)."""
        return RunId.of(self.summary)

    @property
    def key(self) -> PropertyKey:
        """(source, regime, target) of the run."""
        return self.summary["source"], self.summary["regime"], self.summary["target"]

    @property
    def test_mae(self) -> float:
        """MAE of the test predictions."""
        return float(np.mean(np.abs(self.y_pred - self.y_true))) if self.y_true.size else math.nan

    @property
    def baseline(self) -> float:
        """The constant baseline of the run's training split (NaN when the summary has none)."""
        value = self.summary["baseline_value"]
        return math.nan if value is None else float(value)


def load_run_result(summary_path: Path) -> RunResult:
    """Read a run's summary, per-epoch metrics and test-split predictions, checked against their sha256."""
    summary_path = Path(summary_path)
    run_dir = summary_path.parent
    summary = read_json(summary_path, layout=RUN_SUMMARY)
    verify_files(run_dir, summary["files"])
    table = read_parquet(run_dir / "predictions.parquet", "predictions",
                         columns=["material_id", "split", "target", "prediction"])
    test = [i for i, split in enumerate(table.column("split").to_pylist()) if split == "test"]
    ids = table.column("material_id").to_pylist()
    y_true = np.asarray(table.column("target").to_pylist(), dtype=np.float64)[test]
    y_pred = np.asarray(table.column("prediction").to_pylist(), dtype=np.float64)[test]
    return RunResult(summary_path, summary, read_jsonl(run_dir / "metrics.jsonl"), [ids[i] for i in test],
                     y_true, y_pred)


def common_test_ids(runs: list[RunResult]) -> list[str]:
    """The test materials every run predicted, in the first run's order."""
    shared = set(runs[0].test_ids).intersection(*(r.test_ids for r in runs[1:]))
    return [mid for mid in runs[0].test_ids if mid in shared]


def aligned_errors(runs: list[RunResult], ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(signed errors float64 [S, n] of each run on `ids`, targets float64 [n]).

    Raises:
        ValueError: two runs disagree on a material's target (they were not trained on one structures table).
    """
    errors = np.empty((len(runs), len(ids)))
    y = None
    for row, run in enumerate(runs):
        where = {mid: i for i, mid in enumerate(run.test_ids)}
        pick = [where[mid] for mid in ids]
        target = run.y_true[pick]
        if y is not None and not np.array_equal(target, y):
            raise ValueError(f"{run.path}: its test targets differ from {runs[0].path}'s for the same materials; "
                             "the runs were trained on different structures tables")
        y = target
        errors[row] = run.y_pred[pick] - target
    return errors, (y if y is not None else np.zeros(0))
