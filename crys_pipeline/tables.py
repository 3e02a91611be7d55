"""Stage `tables`: paper-style tables (CSV + Markdown) assembled from training-run summaries.

A table block of config.yaml (`{source, targets, variants, regime}`) names a grid of cells, one
per (target, variant); each cell gathers the `summary.json` of every seed trained for it. A row
reports the test MAE of the validation-selected checkpoint as mean and sample standard deviation
over seeds (blank with one seed), the last-epoch and min-over-epochs test MAE (diagnostics,
docs/method.md §6), the split sizes and hash, the text encoder, and the paper's MAE for the same cell
with its source and origin and our ratio to it. Package data `data/paper_values.csv` holds every
number of the paper's Tables 1-6 (transcribed from the paper): `origin` is `own` for the paper's own
runs and `copied` where the paper took the number from the baseline's own paper. The Markdown marks
copied values with a dagger and lists the paper's columns the table does not run (e.g. SchNet) below it.

Every run must belong to the table (same source and regime, a listed target and variant), every
cell must have at least one run, and the seeds of a cell must share split, sizes and encoder:
anything else raises `TableSpecError` naming the offending file, so a table is never assembled
from runs of another configuration. Each summary.json is read through its layout
(`schemas.RUN_SUMMARY`): a missing, unknown or mistyped key is an ArtifactError naming file and key.
"""

from __future__ import annotations

import csv
import io as _stdio
import logging
import math
import statistics
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from crys_pipeline import __version__, evidence
from crys_pipeline.io import read_json, write_text
from crys_pipeline.run_id import RunId
from crys_pipeline.run_results import RunResult, aligned_errors, common_test_ids, load_run_result
from crys_pipeline.schemas import RUN_SUMMARY

log = logging.getLogger(__name__)

#: Columns of a table CSV, in order.
COLUMNS = [
    "table", "source", "regime", "property", "unit", "variant", "encoder", "n_train", "n_val", "n_test",
    "n_dropped", "n_seeds", "seeds", "mae_mean", "mae_std", "baseline", "baseline_value", "baseline_mae",
    "skill", "skill_low", "skill_high", "vs_baseline", "train_mae_mean", "baseline_train_mae", "n_underfit",
    "marks", "last_mae_mean", "min_test_mae_mean", "paper_mae", "ratio_to_paper", "paper_label", "paper_ref",
    "paper_origin", "split_hash",
]
#: Keys that must agree between the seeds of one cell.
SHARED_KEYS = ("split_hash", "n_train", "n_val", "n_test", "encoder", "baseline", "baseline_value",
               "baseline_test_mae", "baseline_train_mae")
_INT_COLUMNS = {"n_train", "n_val", "n_test", "n_dropped", "n_seeds", "n_underfit"}
_FLOAT_COLUMNS = {"mae_mean", "mae_std", "baseline_value", "baseline_mae", "skill", "skill_low", "skill_high",
                  "train_mae_mean", "baseline_train_mae", "last_mae_mean", "min_test_mae_mean", "paper_mae",
                  "ratio_to_paper"}
#: Marks of a cell in every place it appears (Markdown tables, report, plots), with their footnotes.
MARKS = {
    "§": "not clearly below the constant baseline: the 95 % interval of its MAE minus the baseline's, over seeds "
         "and test materials, does not lie below 0",
    "¶": "underfit: in at least one seed the training MAE is not clearly below the baseline's on the training "
         "materials (the model did not learn the target's scale)",
    "‡": "diverged: a seed's loss became non-finite",
}

CellKey = tuple[str, str, str, str, str]  # (table, source, target, variant, regime)


class TableSpecError(ValueError):
    """A run summary disagrees with its table's spec, or the runs do not cover the table."""


@dataclass(frozen=True)
class PaperValue:
    """One MAE reported in the CrysMMNet paper's Tables 1-6.

    Attributes:
        mae: the paper's MAE in the target's unit.
        label: the paper's column name (e.g. "CrysMMNet", "Global+Local", "SchNet").
        reference: the paper's table and column, with notes (e.g. disagreement with Table 1).
        origin: "own" (the paper's own run) or "copied" (taken from the baseline's own paper).
    """

    mae: float
    label: str
    reference: str
    origin: str


def load_paper_values(path: str | Path | None = None) -> dict[CellKey, PaperValue]:
    """The paper's MAE per table cell, keyed by (table, source, target, variant, regime).

    Args:
        path: a CSV of the package-data layout; default the shipped `data/paper_values.csv`.
    """
    source = Path(path) if path else files("crys_pipeline") / "data" / "paper_values.csv"
    values: dict[CellKey, PaperValue] = {}
    for rec in csv.DictReader(_stdio.StringIO(source.read_text())):
        if not rec["mae"]:
            continue
        key = (rec["table"], rec["source"], rec["target"], rec["variant"], rec["regime"])
        values[key] = PaperValue(float(rec["mae"]), rec["paper_label"], rec["reference"], rec["origin"])
    return values


def spec_targets(spec: dict[str, Any], units: dict[str, str]) -> list[str]:
    """The table's target names, `all` expanded to every target of the source (units order)."""
    targets = spec["targets"]
    names = list(units) if targets == "all" else list(targets)
    unknown = [t for t in names if t not in units]
    if unknown:
        raise TableSpecError(f"targets {unknown} have no unit; known targets: {sorted(units)}")
    return names


def _check_folder(path: Path, summary: dict[str, Any]) -> None:
    """A summary inside a run folder (``RunId.from_folder``) must be that run's."""
    folder, own = RunId.from_folder(path.parent), RunId.of(summary)
    if folder is not None and folder != own:
        raise TableSpecError(f"{path}: the summary of run {own.key} lies in the folder of {folder.key}; "
                             "delete the run folder and rerun its training job")


def _check_run(path: Path, summary: dict[str, Any], spec: dict[str, Any], targets: list[str]) -> None:
    expected = {"source": spec["source"], "regime": spec["regime"]}
    for key, want in expected.items():
        if summary[key] != want:
            raise TableSpecError(f"{path}: run has {key}={summary[key]!r} but the table spec says {want!r}")
    if summary["target"] not in targets:
        raise TableSpecError(f"{path}: run target {summary['target']!r} is not in the table's targets {targets}")
    if summary["variant"] not in spec["variants"]:
        raise TableSpecError(
            f"{path}: run variant {summary['variant']!r} is not in the table's variants {spec['variants']}"
        )
    _check_folder(path, summary)


def group_runs(
    runs: list[Path], spec: dict[str, Any], targets: list[str]
) -> dict[tuple[str, str], list[RunResult]]:
    """Load and check every run (summary and test predictions); returns {(target, variant): runs sorted by seed}.

    Raises:
        TableSpecError: a run outside the spec, a duplicated seed, or a cell without runs.
    """
    cells: dict[tuple[str, str], list[RunResult]] = {(t, v): [] for t in targets for v in spec["variants"]}
    for path in map(Path, runs):
        summary = read_json(path, layout=RUN_SUMMARY)
        _check_run(path, summary, spec, targets)
        cell = cells[(summary["target"], summary["variant"])]
        if any(r.summary["seed"] == summary["seed"] for r in cell):
            raise TableSpecError(f"{path}: seed {summary['seed']} of {summary['target']}/{summary['variant']} "
                                 "given twice")
        cell.append(load_run_result(path))
    empty = [f"{t}/{v}" for (t, v), cell in cells.items() if not cell]
    if empty:
        raise TableSpecError(f"no runs given for table cells {empty}")
    return {key: sorted(cell, key=lambda r: r.summary["seed"]) for key, cell in cells.items()}


def _num(value: Any) -> float:
    """A summary number as float; a missing one (null, e.g. a diverged run) as NaN."""
    return math.nan if value is None else float(value)


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def _std(values: list[float]) -> float:
    """Sample std; NaN with one value or when a value is missing (a diverged seed)."""
    return statistics.stdev(values) if len(values) > 1 and not any(map(math.isnan, values)) else math.nan


def _shared(cell: list[RunResult]) -> dict[str, Any]:
    first = cell[0].summary
    for run in cell[1:]:
        for key in SHARED_KEYS:
            if run.summary[key] != first[key]:
                raise TableSpecError(
                    f"seeds of {first['target']}/{first['variant']} disagree on {key}: "
                    f"{cell[0].path} has {first[key]!r}, {run.path} has {run.summary[key]!r}"
                )
    return {key: first[key] for key in SHARED_KEYS}


def baseline_evidence(cell: list[RunResult]) -> dict[str, Any]:
    """The cell against its constant baseline: skill (MAE / baseline MAE) with its interval, verdict, marks.

    The interval is ``evidence.below`` of the seeds' test errors against the baseline's on the test
    materials every seed predicted; as the baseline MAE is one number, skill = 1 + difference / baseline MAE.
    """
    ids = common_test_ids(cell)
    errors, y = aligned_errors(cell, ids)
    base = cell[0].baseline
    base_mae = float(np.mean(np.abs(base - y))) if y.size else math.nan
    interval = evidence.below(errors, np.broadcast_to(base - y, errors.shape))
    n_underfit = sum(bool(r.summary["underfit"]) for r in cell)
    marks = ("§" if interval.verdict != evidence.LOWER else "") + ("¶" if n_underfit else "")
    marks += "‡" if any(r.summary["stop_reason"].startswith("diverged") for r in cell) else ""

    def skill(difference: float) -> float:
        return 1 + difference / base_mae if base_mae > 0 else math.nan

    return {"baseline": cell[0].summary["baseline"], "baseline_value": base, "baseline_mae": base_mae,
            "skill": skill(interval.mean), "skill_low": skill(interval.low), "skill_high": skill(interval.high),
            "vs_baseline": interval.verdict, "n_underfit": n_underfit, "marks": marks}


def cell_row(
    table: str, *, spec: dict[str, Any], unit: str, cell: list[RunResult], paper: PaperValue | None
) -> dict[str, Any]:
    """One table row from the runs of one (target, variant) cell."""
    shared = _shared(cell)
    summaries = [r.summary for r in cell]
    maes = [_num(s["test_mae"]) for s in summaries]
    mae_mean = _mean(maes)
    return {
        "table": table, "source": spec["source"], "regime": spec["regime"], "property": summaries[0]["target"],
        "unit": unit, "variant": summaries[0]["variant"], "encoder": shared["encoder"] or "",
        "n_train": shared["n_train"], "n_val": shared["n_val"], "n_test": shared["n_test"],
        "n_dropped": len(summaries[0]["dropped"]), "n_seeds": len(cell),
        "seeds": " ".join(str(s["seed"]) for s in summaries),
        "mae_mean": mae_mean, "mae_std": _std(maes), **baseline_evidence(cell),
        "train_mae_mean": _mean([_num(s["train_mae"]) for s in summaries]),
        "baseline_train_mae": _num(shared["baseline_train_mae"]),
        "last_mae_mean": _mean([_num(s["last_test_mae"]) for s in summaries]),
        "min_test_mae_mean": _mean([_num(s["min_test_mae"]) for s in summaries]),
        "paper_mae": paper.mae if paper else math.nan,
        "ratio_to_paper": mae_mean / paper.mae if paper else math.nan,
        "paper_label": paper.label if paper else "", "paper_ref": paper.reference if paper else "",
        "paper_origin": paper.origin if paper else "",
        "split_hash": shared["split_hash"],
        "notes": [f"seed {s['seed']}: {s['stop_reason']}" for s in summaries
                  if s["stop_reason"].startswith("diverged")],
    }


def assemble_table(
    table: str,
    *,
    spec: dict[str, Any],
    units: dict[str, str],
    runs: list[Path],
    paper_values: dict[CellKey, PaperValue] | None = None,
) -> list[dict[str, Any]]:
    """Rows of one paper table (targets in spec order, then variants in spec order).

    Args:
        table: table name (table1..table6), the key of the paper values.
        spec: the config block {source, targets ("all" or a list), variants, regime}.
        units: {target: unit} of every target of the source.
        runs: summary.json paths of every seed of every cell.
        paper_values: default the shipped paper values.
    """
    paper_values = load_paper_values() if paper_values is None else paper_values
    targets = spec_targets(spec, units)
    cells = group_runs(runs, spec, targets)
    rows = []
    for (target, variant), cell in cells.items():
        paper = paper_values.get((table, spec["source"], target, variant, spec["regime"]))
        rows.append(cell_row(table, spec=spec, unit=units[target], cell=cell, paper=paper))
    return rows


def _csv_value(value: Any) -> Any:
    return "" if isinstance(value, float) and math.isnan(value) else value


def table_csv(rows: list[dict[str, Any]]) -> str:
    """The CSV text of a table (NaN written as an empty field)."""
    out = _stdio.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _csv_value(row[k]) for k in COLUMNS} for row in rows)
    return out.getvalue()


def read_table_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a table CSV with numbers parsed back (empty float fields become NaN)."""
    rows = []
    for rec in csv.DictReader(_stdio.StringIO(Path(path).read_text())):
        missing = [c for c in COLUMNS if c not in rec]
        if missing:
            raise TableSpecError(f"{path}: not a table CSV, columns {missing} missing")
        for col in _INT_COLUMNS:
            rec[col] = int(rec[col])
        for col in _FLOAT_COLUMNS:
            rec[col] = float(rec[col]) if rec[col] != "" else math.nan
        rows.append(rec)
    return rows


def fmt(value: float, digits: int = 4) -> str:
    """A number with `digits` significant digits; an en dash for NaN."""
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}g}"


def _paper_cell(mae: float, origin: str) -> str:
    """The paper's MAE for Markdown, with a dagger where the paper copied it from the baseline's paper."""
    return fmt(mae) + ("†" if origin == "copied" else "")


def other_paper_columns(table: str, rows: list[dict[str, Any]],
                        paper_values: dict[CellKey, PaperValue] | None = None) -> list[str]:
    """Markdown lines: the paper's MAEs for the rows' properties in the columns this table does not run."""
    if not rows:
        return []
    values = load_paper_values() if paper_values is None else paper_values
    source, regime = rows[0]["source"], rows[0]["regime"]
    props = list(dict.fromkeys(row["property"] for row in rows))
    ours = {row["variant"] for row in rows}
    extra = [(key[2], v) for key, v in values.items()
             if key[:2] == (table, source) and key[4] == regime and key[2] in props and key[3] not in ours]
    if not extra:
        return []
    labels = list(dict.fromkeys(v.label for _, v in extra))
    lines = [f"The paper's other {table} columns for these properties (not run here):", "",
             "| property | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for prop in props:
        cells = {v.label: _paper_cell(v.mae, v.origin) for target, v in extra if target == prop}
        lines.append(f"| {prop} | " + " | ".join(cells.get(label, "–") for label in labels) + " |")
    return [*lines, ""]


def skill_text(row: dict[str, Any]) -> str:
    """Skill with its interval, e.g. `0.62 [0.55, 0.70]`; an en dash without a baseline MAE."""
    if math.isnan(row["skill"]):
        return "–"
    if math.isnan(row["skill_low"]):
        return f"{row['skill']:.2f}"
    return f"{row['skill']:.2f} [{row['skill_low']:.2f}, {row['skill_high']:.2f}]"


def mae_text(row: dict[str, Any]) -> str:
    """Mean ± std over seeds with the cell's marks, e.g. `0.328 ± 0.012 §`."""
    text = fmt(row["mae_mean"]) + ("" if math.isnan(row["mae_std"]) else f" ± {fmt(row['mae_std'], 2)}")
    return text + (f" {row['marks']}" if row["marks"] else "")


def _md_row(row: dict[str, Any], last_epoch: bool) -> str:
    ratio = "–" if math.isnan(row["ratio_to_paper"]) else f"{row['ratio_to_paper']:.2f}×"
    cells = [
        row["property"], row["unit"], row["variant"], row["encoder"] or "–",
        f"{row['n_train']} / {row['n_val']} / {row['n_test']}", mae_text(row), str(row["n_seeds"]),
        fmt(row["baseline_mae"]), skill_text(row), *([fmt(row["last_mae_mean"])] if last_epoch else []),
        _paper_cell(row["paper_mae"], row["paper_origin"]), ratio, f"`{row['split_hash'][:12]}`",
    ]
    return "| " + " | ".join(cells) + " |"


def mark_footnotes(rows: list[dict[str, Any]]) -> list[str]:
    """One line per mark used in `rows`, saying what it means (Markdown)."""
    used = "".join(row["marks"] for row in rows)
    return [f"{mark} {meaning}." for mark, meaning in MARKS.items() if mark in used]


def table_markdown(table: str, spec: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """A readable Markdown rendering of a table with a legend.

    The last-epoch column is left out when no run has a per-epoch test curve (`train.test_each_epoch: false`).
    """
    last_epoch = any(not math.isnan(row["last_mae_mean"]) for row in rows)
    head = ["property", "unit", "variant", "text encoder", "n train / val / test", "test MAE (mean ± std)",
            "seeds", "baseline MAE", "skill [95 % interval]", *(["last-epoch MAE"] if last_epoch else []),
            "paper MAE", "ours / paper", "split"]
    baseline = rows[0]["baseline"] if rows else evidence.BASELINE
    lines = [
        f"## {table}: {spec['source']}, regime `{spec['regime']}`",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] * 4 + ["---:"] * (len(head) - 5) + ["---"]) + "|",
        *(_md_row(row, last_epoch) for row in rows),
        "",
        (
            "Test MAE of the validation-selected checkpoint, mean ± sample std over seeds (no std with one seed). "
            f"Baseline: the constant {baseline} (the constant with the lowest training MAE), its test MAE on the "
            "same materials; skill = MAE / baseline MAE, below 1 is better than the constant, with the 95 % "
            "interval over seeds and test materials (docs/method.md §7.6). "
            + ("Last-epoch MAE is the final epoch's test MAE. " if last_epoch else "")
            + "Paper MAE: the paper's value for the same cell (– where the paper gives none; † copied by the "
            "paper from the baseline's own paper, other splits and data versions); see the CSV `paper_ref` and "
            "`paper_origin` columns. split: first 12 hex digits of the split hash. "
            f"crys_pipeline {__version__}."
        ),
        "",
        *mark_footnotes(rows),
        *(f"‡ {row['property']} / {row['variant']}, {note}" for row in rows for note in row.get("notes", [])),
        "",
        *other_paper_columns(table, rows),
    ]
    return "\n".join(lines)


def build_table(
    table: str, *, spec: dict[str, Any], units: dict[str, str], runs: list[Path], out_csv: Path, out_md: Path
) -> list[dict[str, Any]]:
    """Assemble one table from its runs and write the CSV and the Markdown; returns the rows."""
    rows = assemble_table(table, spec=spec, units=units, runs=runs)
    write_text(table_csv(rows), out_csv)
    write_text(table_markdown(table, spec, rows), out_md)
    log.info("%s: %d rows from %d runs -> %s, %s", table, len(rows), len(runs), out_csv, out_md)
    return rows
