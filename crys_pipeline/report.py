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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from crys_pipeline import __version__, evidence
from crys_pipeline import comparisons as comparisons_module
from crys_pipeline.io import write_text
from crys_pipeline.run_results import PropertyKey, RunResult, load_run_result
from crys_pipeline.tables import fmt, read_table_csv, table_markdown

log = logging.getLogger(__name__)

MAX_COLUMNS = 4


def group_by_property(runs: list[RunResult]) -> dict[PropertyKey, dict[str, list[RunResult]]]:
    """{(source, regime, target): {variant: runs sorted by seed}}, variants in first-seen order."""
    groups: dict[PropertyKey, dict[str, list[RunResult]]] = {}
    for run in runs:
        groups.setdefault(run.key, {}).setdefault(run.id.variant, []).append(run)
    for variants in groups.values():
        for seeds in variants.values():
            seeds.sort(key=lambda r: r.id.seed)
    return groups


def check_tables(tables: dict[str, list[dict[str, Any]]],
                 groups: dict[PropertyKey, dict[str, list[RunResult]]]) -> None:
    """Raise ValueError unless every table row's seeds are exactly the runs given for its cell."""
    for name, rows in tables.items():
        for row in rows:
            runs = groups.get((row["source"], row["regime"], row["property"]), {}).get(row["variant"], [])
            have = " ".join(str(r.id.seed) for r in runs)
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


def parity_figure(key: PropertyKey, variants: dict[str, list[RunResult]], rows: dict[str, dict[str, Any]],
                  path: Path) -> Path:
    """Parity plot of the test split, one panel per variant, seeds overlaid, the baseline drawn; returns `path`.

    Args:
        key: (source, regime, target).
        variants: the runs of each variant.
        rows: the table row of each variant (unit, baseline, marks).
        path: the PNG.
    """
    fig, axes = _grid(len(variants))
    values = np.concatenate([np.concatenate([r.y_true, r.y_pred]) for rs in variants.values() for r in rs])
    values = values[np.isfinite(values)]  # a diverged run's NaN/inf predictions must not blow up the limits
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    pad = 0.04 * (high - low or 1.0)
    lims = (low - pad, high + pad)
    for ax, (variant, runs) in zip(axes, variants.items(), strict=False):  # the grid may have spare panels
        row = rows.get(variant, {})
        unit = row.get("unit", "")
        for run in runs:
            ax.scatter(run.y_true, run.y_pred, s=8, alpha=0.5, label=f"seed {run.id.seed}")
        ax.plot(lims, lims, color="black", lw=0.8, label="y = x")
        base = runs[0].baseline
        if math.isfinite(base):
            base_mae = fmt(row.get("baseline_mae", math.nan))
            ax.axhline(base, color="grey", ls="--", lw=1.0,
                       label=f"constant baseline ({runs[0].summary['baseline']}), MAE {base_mae}")
        maes = [r.test_mae for r in runs]
        spread = f" ± {fmt(float(np.std(maes, ddof=1)), 2)}" if len(maes) > 1 else ""
        marks = f" {row['marks']}" if row.get("marks") else ""
        ax.set_title(f"{variant}{marks}\ntest MAE {fmt(float(np.mean(maes)))}{spread} {unit} ({_seeds(len(runs))})",
                     fontsize=9)
        ax.set(xlim=lims, ylim=lims, aspect="equal", xlabel=f"{key[2]} [{unit}]", ylabel=f"predicted [{unit}]")
        ax.legend(fontsize=6, loc="best")
    fig.suptitle(f"{key[2]}\n{key[0]}, {key[1]}: test-split parity", fontsize=10)
    fig.savefig(path, dpi=110)
    return path


def _seeds(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


def _series(metrics: list[dict[str, Any]], key: str) -> np.ndarray:
    """One metric per epoch as float64, NaN where the trainer logged null (empty set or non-finite)."""
    return np.array([math.nan if m.get(key) is None else m[key] for m in metrics], dtype=np.float64)


def curves_figure(key: PropertyKey, variants: dict[str, list[RunResult]], rows: dict[str, dict[str, Any]],
                  path: Path) -> Path:
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
        unit = rows.get(variant, {}).get("unit", "")
        ax.set(title=variant, xlabel="epoch", ylabel=f"MAE [{unit}]")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{key[2]}\n{key[0]}, {key[1]}: learning curves", fontsize=10)
    fig.savefig(path, dpi=110)
    return path


def draw_figures(
    groups: dict[PropertyKey, dict[str, list[RunResult]]], rows: dict[PropertyKey, dict[str, dict[str, Any]]],
    fig_dir: Path,
) -> dict[PropertyKey, tuple[Path, Path]]:
    """Both figures of every property into `fig_dir`; returns {key: (parity PNG, curves PNG)}.

    `rows` holds the table row of every (property, variant), for units, baselines and marks.
    """
    fig_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for key, variants in tqdm(sorted(groups.items()), desc="report figures", disable=not sys.stderr.isatty()):
        stem = "-".join(key)
        out[key] = (
            parity_figure(key, variants, rows.get(key, {}), fig_dir / f"{stem}-parity.png"),
            curves_figure(key, variants, rows.get(key, {}), fig_dir / f"{stem}-curves.png"),
        )
    return out


def _copied(row: dict[str, Any]) -> str:
    return ", copied by the paper from the baseline's own paper" if row["paper_origin"] == "copied" else ""


def paper_standing(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown bullet lines: our MAE against the paper's per cell, and their geometric mean."""
    lines = []
    ratios = []
    for row in rows:
        if math.isnan(row["paper_mae"]):
            continue
        ratios.append(row["ratio_to_paper"])
        ratio = row["ratio_to_paper"]
        standing = f"{ratio:.2f}× the paper's MAE" if math.isfinite(ratio) else "no finite MAE to compare"
        lines.append(
            f"- {row['property']} / {row['variant']}: {fmt(row['mae_mean'])} {row['unit']} vs the paper's "
            f"{fmt(row['paper_mae'])} ({row['paper_label']}{_copied(row)}): {standing}."
        )
    finite = [r for r in ratios if math.isfinite(r) and r > 0]
    if finite:
        geo = math.exp(sum(math.log(r) for r in finite) / len(finite))
        lines.append(f"- Geometric mean of ours / paper over {len(finite)} cells: {geo:.2f}×.")
    if any("disagrees" in row["paper_ref"] for row in rows):
        lines.append("- The paper's Table 6 Global+Local MAEs disagree with its own Table 1, so the "
                     "ablation setup is unknown: compare global/local against our own full-text run.")
    return lines


def baseline_sentence(rows: list[dict[str, Any]]) -> str:
    """How many cells are clearly below their constant baseline, naming those that are not and the underfit ones."""
    below = [r for r in rows if r["vs_baseline"] == evidence.LOWER]
    others = [f"{r['property']} / {r['variant']}" for r in rows if r["vs_baseline"] != evidence.LOWER]
    underfit = [f"{r['property']} / {r['variant']}" for r in rows if r["n_underfit"]]
    text = (f"{len(below)} of {len(rows)} cells are clearly below their constant baseline ({rows[0]['baseline']}; "
            "95 % interval over seeds and test materials)")
    text += f"; not clearly below (§): {', '.join(others)}" if others else ""
    text += f"; underfit in at least one seed (¶): {', '.join(underfit)}" if underfit else ""
    return text + "."


def conclusions(name: str, rows: list[dict[str, Any]], pairs: list[dict[str, Any]]) -> list[str]:
    """The table's generated conclusions: the baseline sentence and one sentence per compared pair."""
    return [baseline_sentence(rows), *comparisons_module.conclusions([p for p in pairs if p["table"] == name])]


def _span(values: list[int]) -> str:
    return str(values[0]) if values[0] == values[-1] else f"{values[0]}–{values[-1]}"


def _caveat(runs: list[RunResult]) -> str:
    """What the runs are, from their own summaries, and why their MAEs are not the paper's."""
    encoders = sorted({r.summary["encoder"] for r in runs if r.summary["encoder"]})
    counts = {split: sorted({int(r.summary[f"n_{split}"]) for r in runs}) for split in ("train", "val", "test")}
    epochs = sorted({len(r.metrics) for r in runs})
    sources = sorted({r.summary["source"] for r in runs})
    seeds = sorted({r.id.seed for r in runs})
    scalings = sorted({r.summary["target_scaling"] for r in runs})
    these = "This run" if len(runs) == 1 else f"These {len(runs)} runs"
    return (
        f"{these} on {', '.join(sources)} trained on {_span(counts['train'])} materials per property "
        f"(validation {_span(counts['val'])}, test {_span(counts['test'])}) for {_span(epochs)} epochs, seeds "
        f"{', '.join(map(str, seeds))}, target scaling {', '.join(scalings)}, text encoder(s) "
        f"{', '.join(encoders) or 'none'}. The paper trains on the full official splits (e.g. 44,569 JARVIS "
        "formation-energy materials) for 1000 epochs with MatSciBERT, so absolute MAEs and the ratios to the "
        "paper are not comparable with it; the conclusions below compare the runs with each other and with a "
        "constant, on these test materials."
    )


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def _table_section(name: str, rows: list[dict[str, Any]], pairs: list[dict[str, Any]]) -> list[str]:
    heading, *body = table_markdown(name, {"source": rows[0]["source"], "regime": rows[0]["regime"]}, rows).splitlines()
    props = dict.fromkeys((row["source"], row["regime"], row["property"]) for row in rows)
    links = ", ".join(f"[{key[2]}](#{_anchor(key)})" for key in props)
    return [heading, "", "Conclusions (generated from the baseline marks and results/comparisons.csv):", "",
            *(f"- {sentence}" for sentence in conclusions(name, rows, pairs)), *body, "",
            "Against the paper (a different scale, see above):", "", *paper_standing(rows), "",
            f"Figures: {links}", ""]


def _anchor(key: PropertyKey) -> str:
    return "-".join(key).lower()


def report_markdown(
    tables: dict[str, list[dict[str, Any]]],
    pairs: list[dict[str, Any]],
    runs: list[RunResult],
    figures: dict[PropertyKey, tuple[Path, Path]],
    md_dir: Path,
    fusion: str = "",
) -> str:
    """The whole report: caveat, per table its conclusions, table and figure links, the fusion section, figures."""
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    generated = f"Generated by crys_pipeline {__version__} at {stamp} from {len(runs)} runs and {len(tables)} tables."
    lines = ["# CrysMMNet reproduction report", "", generated, "", _caveat(runs), ""]
    for name, rows in tables.items():
        lines += _table_section(name, rows, pairs)
    lines += [*fusion.splitlines(), ""] if fusion else []
    lines += ["## Figures", ""]
    for key, (parity, curves) in sorted(figures.items()):
        lines += [f'<a id="{_anchor(key)}"></a>', f"### {key[2]} ({key[0]}, {key[1]})", "",
                  f"![parity {key[2]}]({_rel(parity, md_dir)})", "",
                  f"![learning curves {key[2]}]({_rel(curves, md_dir)})", ""]
    return "\n".join(lines)


def build_report(table_csvs: list[Path], *, comparisons: Path, summaries: list[Path], out_md: Path,
                 fig_dir: Path, fusion: Path | None = None) -> Path:
    """Write the report Markdown and its PNGs; returns `out_md`.

    Args:
        table_csvs: CSVs written by `crys-pipeline tables` (the file stem is the table name).
        comparisons: results/comparisons.csv of those tables.
        summaries: summary.json of every run of those tables.
        out_md: the report Markdown (image links are relative to its folder).
        fig_dir: folder for the PNGs.
        fusion: results/fusion.md, the fusion section generated from results/fusion.csv (docs/method.md §11), placed
            after the tables; its links are relative to its own folder, which must be `out_md`'s.
    """
    tables = {Path(p).stem: read_table_csv(p) for p in table_csvs}
    pairs = comparisons_module.read_comparisons(comparisons)
    runs = [load_run_result(Path(p)) for p in summaries]
    groups = group_by_property(runs)
    check_tables(tables, groups)
    rows: dict[PropertyKey, dict[str, dict[str, Any]]] = {}
    for table_rows in tables.values():
        for r in table_rows:
            rows.setdefault((r["source"], r["regime"], r["property"]), {})[r["variant"]] = r
    figures = draw_figures(groups, rows, Path(fig_dir))
    if fusion is not None and Path(fusion).resolve().parent != Path(out_md).resolve().parent:
        raise ValueError(f"{fusion}: the fusion section's links are relative to its folder, not {Path(out_md).parent}")
    section = Path(fusion).read_text() if fusion is not None else ""
    write_text(report_markdown(tables, pairs, runs, figures, Path(out_md).parent, section), out_md)
    log.info("report: %d tables, %d comparisons, %d runs, %d figures -> %s", len(tables), len(pairs), len(runs),
             2 * len(figures), out_md)
    return Path(out_md)
