"""Stage `report`: results/report.md with parity plots, learning curves and the standing against the paper.

Inputs are the table CSVs written by `crys-pipeline tables` and the `summary.json` of every run those
tables were built from (each run folder also holds `metrics.jsonl` and `predictions.parquet`). Per
property (source, regime, target) the report draws

* a parity plot: test-split prediction against the DFT target, one panel per variant, every seed
  overlaid, the mean test MAE over seeds in the panel title and the y = x line;
* learning curves: validation (dashed) and test (solid) MAE per epoch on a log axis, one panel
  per variant, one line pair per seed, the validation-selected epoch marked.

Per table it writes a short generated summary: the best variant per property and, where the paper
gives an MAE for a cell, our MAE as a ratio to it (noting values the paper copied from a baseline's paper).
The table rows are checked against the runs given (same seeds per cell), so a stale table cannot be reported
next to fresh runs.
PNGs use matplotlib's Agg canvas (no display, no pyplot global state).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from crys_pipeline import __version__
from crys_pipeline.io import read_json, read_jsonl, read_parquet, verify_files, write_text
from crys_pipeline.schemas import RUN_SUMMARY
from crys_pipeline.tables import fmt, read_table_csv, table_markdown

log = logging.getLogger(__name__)

PropertyKey = tuple[str, str, str]  # (source, regime, target)
MAX_COLUMNS = 4


@dataclass(frozen=True)
class Run:
    """One training run as the report needs it.

    Attributes:
        summary: the run's summary.json.
        metrics: one dict per epoch from metrics.jsonl (epoch, val_mae, test_mae, ...).
        y_true: DFT target values of the test split, float64 [n_test].
        y_pred: predictions for the same materials, float64 [n_test].
    """

    summary: dict[str, Any]
    metrics: list[dict[str, Any]]
    y_true: np.ndarray
    y_pred: np.ndarray

    @property
    def key(self) -> PropertyKey:
        """(source, regime, target) of the run."""
        return self.summary["source"], self.summary["regime"], self.summary["target"]

    @property
    def test_mae(self) -> float:
        """MAE of the plotted test predictions."""
        return float(np.mean(np.abs(self.y_pred - self.y_true))) if self.y_true.size else math.nan


def load_run(summary_path: Path) -> Run:
    """Read a run's summary, per-epoch metrics and test-split predictions.

    The files are checked against the sha256 the summary records for them.
    """
    run_dir = Path(summary_path).parent
    summary = read_json(summary_path, layout=RUN_SUMMARY)
    verify_files(run_dir, summary["files"])
    table = read_parquet(run_dir / "predictions.parquet", "predictions", columns=["split", "target", "prediction"])
    test = [i for i, split in enumerate(table.column("split").to_pylist()) if split == "test"]
    y_true = np.asarray(table.column("target").to_pylist(), dtype=np.float64)[test]
    y_pred = np.asarray(table.column("prediction").to_pylist(), dtype=np.float64)[test]
    return Run(summary, read_jsonl(run_dir / "metrics.jsonl"), y_true, y_pred)


def group_runs(runs: list[Run]) -> dict[PropertyKey, dict[str, list[Run]]]:
    """{(source, regime, target): {variant: runs sorted by seed}}, variants in first-seen order."""
    groups: dict[PropertyKey, dict[str, list[Run]]] = {}
    for run in runs:
        groups.setdefault(run.key, {}).setdefault(run.summary["variant"], []).append(run)
    for variants in groups.values():
        for seeds in variants.values():
            seeds.sort(key=lambda r: r.summary["seed"])
    return groups


def check_tables(tables: dict[str, list[dict[str, Any]]], groups: dict[PropertyKey, dict[str, list[Run]]]) -> None:
    """Raise ValueError unless every table row's seeds are exactly the runs given for its cell."""
    for name, rows in tables.items():
        for row in rows:
            runs = groups.get((row["source"], row["regime"], row["property"]), {}).get(row["variant"], [])
            have = " ".join(str(r.summary["seed"]) for r in runs)
            if have != row["seeds"]:
                raise ValueError(
                    f"{name}: row {row['property']}/{row['variant']} was built from seeds [{row['seeds']}] but the "
                    f"runs given have seeds [{have}]; rebuild the table"
                )


def _grid(n_panels: int, size: float = 3.9) -> tuple[Any, np.ndarray]:
    from matplotlib.figure import Figure

    ncols = min(n_panels, MAX_COLUMNS)
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(size * ncols, size * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes


def parity_figure(key: PropertyKey, variants: dict[str, list[Run]], unit: str, path: Path) -> Path:
    """Parity plot of the test split, one panel per variant, seeds overlaid; returns `path`."""
    fig, axes = _grid(len(variants))
    values = np.concatenate([np.concatenate([r.y_true, r.y_pred]) for rs in variants.values() for r in rs])
    values = values[np.isfinite(values)]  # a diverged run's NaN/inf predictions must not blow up the limits
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    pad = 0.04 * (high - low or 1.0)
    lims = (low - pad, high + pad)
    for ax, (variant, runs) in zip(axes, variants.items(), strict=False):  # the grid may have spare panels
        for run in runs:
            ax.scatter(run.y_true, run.y_pred, s=10, alpha=0.6, label=f"seed {run.summary['seed']}")
        ax.plot(lims, lims, color="black", lw=0.8, label="y = x")
        maes = [r.test_mae for r in runs]
        spread = f" ± {fmt(float(np.std(maes, ddof=1)), 2)}" if len(maes) > 1 else ""
        ax.set_title(f"{variant}\ntest MAE {fmt(float(np.mean(maes)))}{spread} {unit} ({len(runs)} seeds)", fontsize=9)
        ax.set(xlim=lims, ylim=lims, aspect="equal", xlabel=f"DFT [{unit}]", ylabel=f"predicted [{unit}]")
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{key[2]}\n{key[0]}, {key[1]}: test-split parity", fontsize=10)
    fig.savefig(path, dpi=110)
    return path


def _series(metrics: list[dict[str, Any]], key: str) -> np.ndarray:
    """One metric per epoch as float64, NaN where the trainer logged null (empty set or non-finite)."""
    return np.array([math.nan if m.get(key) is None else m[key] for m in metrics], dtype=np.float64)


def curves_figure(key: PropertyKey, variants: dict[str, list[Run]], unit: str, path: Path) -> Path:
    """Validation/test MAE per epoch (log y), one panel per variant, one line pair per seed; returns `path`."""
    from matplotlib.ticker import MaxNLocator

    fig, axes = _grid(len(variants))
    for ax, (variant, runs) in zip(axes, variants.items(), strict=False):  # the grid may have spare panels
        for i, run in enumerate(runs):
            color = f"C{i}"
            epochs = [m["epoch"] for m in run.metrics]
            val, test = _series(run.metrics, "val_mae"), _series(run.metrics, "test_mae")
            ax.plot(epochs, val, ls="--", color=color, label=f"val, seed {run.summary['seed']}")
            ax.plot(epochs, test, color=color, label=f"test, seed {run.summary['seed']}")
            if run.summary["best_epoch"] in epochs:
                best = epochs.index(run.summary["best_epoch"])
                ax.plot([epochs[best]], [val[best]], "o", color=color, ms=5, label="val-selected" if i == 0 else None)
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(title=variant, xlabel="epoch", ylabel=f"MAE [{unit}]")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{key[2]}\n{key[0]}, {key[1]}: learning curves", fontsize=10)
    fig.savefig(path, dpi=110)
    return path


def draw_figures(
    groups: dict[PropertyKey, dict[str, list[Run]]], units: dict[PropertyKey, str], fig_dir: Path
) -> dict[PropertyKey, tuple[Path, Path]]:
    """Both figures of every property into `fig_dir`; returns {key: (parity PNG, curves PNG)}."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for key, variants in tqdm(sorted(groups.items()), desc="report figures", disable=not sys.stderr.isatty()):
        stem = "-".join(key)
        out[key] = (
            parity_figure(key, variants, units.get(key, ""), fig_dir / f"{stem}-parity.png"),
            curves_figure(key, variants, units.get(key, ""), fig_dir / f"{stem}-curves.png"),
        )
    return out


def _copied(row: dict[str, Any]) -> str:
    return ", copied by the paper from the baseline's own paper" if row["paper_origin"] == "copied" else ""


def table_summary(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown bullet lines: our MAE against the paper's per cell, and the best variant per property."""
    lines = []
    ratios = []
    for row in rows:
        if math.isnan(row["paper_mae"]):
            continue
        ratios.append(row["ratio_to_paper"])
        ratio = row["ratio_to_paper"]
        standing = f"**{ratio:.2f}×** the paper's MAE" if math.isfinite(ratio) else "no finite MAE to compare"
        lines.append(
            f"- {row['property']} / {row['variant']}: {fmt(row['mae_mean'])} {row['unit']} vs the paper's "
            f"{fmt(row['paper_mae'])} ({row['paper_label']}{_copied(row)}): {standing}."
        )
    finite = [r for r in ratios if math.isfinite(r) and r > 0]
    if finite:
        geo = math.exp(sum(math.log(r) for r in finite) / len(finite))
        lines.append(f"- Geometric mean of ours / paper over {len(finite)} cells: **{geo:.2f}×**.")
    if not ratios:
        lines.append("- The paper gives no MAE for this table's cells; compare the variants with each other.")
    if any("disagrees" in row["paper_ref"] for row in rows):
        lines.append("- The paper's Table 6 Global+Local MAEs disagree with its own Table 1, so the "
                     "ablation setup is unknown: compare global/local against our own full-text run.")
    for prop in dict.fromkeys(row["property"] for row in rows):
        cands = [r for r in rows if r["property"] == prop and math.isfinite(r["mae_mean"])]
        if len(cands) > 1:
            best = min(cands, key=lambda r: r["mae_mean"])
            lines.append(f"- {prop}: lowest MAE with **{best['variant']}** ({fmt(best['mae_mean'])} {best['unit']}).")
    return lines


def _span(values: list[int]) -> str:
    return str(values[0]) if values[0] == values[-1] else f"{values[0]}–{values[-1]}"


def _caveat(runs: list[Run]) -> str:
    encoders = sorted({r.summary["encoder"] for r in runs if r.summary["encoder"]})
    n_train = sorted({int(r.summary["n_train"]) for r in runs})
    epochs = sorted({len(r.metrics) for r in runs})
    return (
        f"These runs trained on {_span(n_train)} materials per property for {_span(epochs)} "
        f"epochs with text encoder(s) {', '.join(encoders) or 'none'}. The paper trains on the full official "
        "splits (e.g. 44,569 JARVIS formation-energy materials) for 1000 epochs with MatSciBERT; the offline "
        "default uses a small subset and a small text model, so absolute MAEs and the ratios below are **not "
        "comparable** with the paper. They show where this run stands, not whether the paper reproduces."
    )


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def _table_section(name: str, rows: list[dict[str, Any]]) -> list[str]:
    heading, *body = table_markdown(name, {"source": rows[0]["source"], "regime": rows[0]["regime"]}, rows).splitlines()
    props = dict.fromkeys((row["source"], row["regime"], row["property"]) for row in rows)
    links = ", ".join(f"[{key[2]}](#{_anchor(key)})" for key in props)
    return [heading, "", *table_summary(rows), *body, "", f"Figures: {links}", ""]


def _anchor(key: PropertyKey) -> str:
    return "-".join(key).lower()


def report_markdown(
    tables: dict[str, list[dict[str, Any]]],
    runs: list[Run],
    figures: dict[PropertyKey, tuple[Path, Path]],
    md_dir: Path,
) -> str:
    """The whole report: caveat, per-table summary + table + figure links, then every figure once."""
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    generated = f"Generated by crys_pipeline {__version__} at {stamp} from {len(runs)} runs and {len(tables)} tables."
    lines = ["# CrysMMNet reproduction report", "", generated, "", _caveat(runs), ""]
    for name, rows in tables.items():
        lines += _table_section(name, rows)
    lines += ["## Figures", ""]
    for key, (parity, curves) in sorted(figures.items()):
        lines += [f'<a id="{_anchor(key)}"></a>', f"### {key[2]} ({key[0]}, {key[1]})", "",
                  f"![parity {key[2]}]({_rel(parity, md_dir)})", "",
                  f"![learning curves {key[2]}]({_rel(curves, md_dir)})", ""]
    return "\n".join(lines)


def build_report(table_csvs: list[Path], *, summaries: list[Path], out_md: Path, fig_dir: Path) -> Path:
    """Write the report Markdown and its PNGs; returns `out_md`.

    Args:
        table_csvs: CSVs written by `crys-pipeline tables` (the file stem is the table name).
        summaries: summary.json of every run of those tables.
        out_md: the report Markdown (image links are relative to its folder).
        fig_dir: folder for the PNGs.
    """
    tables = {Path(p).stem: read_table_csv(p) for p in table_csvs}
    runs = [load_run(Path(p)) for p in summaries]
    groups = group_runs(runs)
    check_tables(tables, groups)
    units = {(r["source"], r["regime"], r["property"]): r["unit"] for rows in tables.values() for r in rows}
    figures = draw_figures(groups, units, Path(fig_dir))
    write_text(report_markdown(tables, runs, figures, Path(out_md).parent), out_md)
    log.info("report: %d tables, %d runs, %d figures -> %s", len(tables), len(runs), 2 * len(figures), out_md)
    return Path(out_md)
