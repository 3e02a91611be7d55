"""Stage `fusion`: the fusion variants beyond [CLS] judged like every comparison (docs/method.md §7.6, §11).

The `fusion` block of `tables:` names the runs (ALIGNN, CrysMMNet and the variants of §11 on the offline
default's six JARVIS properties). ``results/fusion.csv`` has the layout of results/comparisons.csv, one row
per property and

- variant against the constant baseline (reference `constant`, the training median of ``evidence``), and
- pair of ``variants.COMPARISONS`` the table runs (each new variant against CrysMMNet and against ALIGNN, the
  tagged-token reduction against all tokens, CrysMMNet against ALIGNN),

each with both MAEs (mean over seeds), the mean paired difference of absolute test errors, its 95 % interval
over seeds and test materials and the verdict read from that interval alone. ``results/fusion.md`` is the
report's fusion section, generated from those rows (and from the cross-attention shares per token category
when given, beside the [CLS] attention of the attention stage); nothing in it is written by hand.
"""

from __future__ import annotations

import csv
import io as _stdio
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from crys_pipeline import comparisons, evidence
from crys_pipeline.io import write_text
from crys_pipeline.run_results import RunResult, aligned_errors, common_test_ids, load_run_result
from crys_pipeline.tables import fmt

log = logging.getLogger(__name__)

TABLE = "fusion"
#: The reference name of the constant baseline in results/fusion.csv.
CONSTANT = "constant"
QUESTION = f"better than a constant ({evidence.BASELINE})"
#: Probability that a two-sided 95 % interval lies wholly below 0 when the true difference is 0.
CHANCE_GAIN = 0.025


def baseline_row(variant: str, runs: dict[int, RunResult]) -> dict[str, Any]:
    """One variant's runs (by seed) against the constant baseline on the test materials every seed predicted."""
    cell = [runs[s] for s in sorted(runs)]
    ids = common_test_ids(cell)
    errors, y = aligned_errors(cell, ids)
    base = cell[0].baseline
    interval = evidence.below(errors, np.broadcast_to(base - y, errors.shape))
    base_mae = float(np.mean(np.abs(base - y))) if ids else math.nan

    def rel(value: float) -> float:
        return value / base_mae if base_mae > 0 else math.nan

    return {"variant": variant, "reference": CONSTANT, "question": QUESTION, "n_seeds": len(cell),
            "n_test": len(ids), "mae_variant": float(np.mean(np.abs(errors))) if ids else math.nan,
            "mae_reference": base_mae, "diff": interval.mean, "rel_diff": rel(interval.mean), "ci_low": interval.low,
            "ci_high": interval.high, "rel_ci_low": rel(interval.low), "rel_ci_high": rel(interval.high),
            "verdict": interval.verdict, "interval": comparisons.INTERVAL}


def fusion_rows(spec: dict[str, Any], units: dict[str, str], runs: list[Path]) -> list[dict[str, Any]]:
    """Every row of results/fusion.csv: per property the baseline rows (spec's variant order), then the pairs.

    Raises:
        ValueError: a cell of the table has no run among those given.
    """
    index = comparisons.index_runs([load_run_result(Path(p)) for p in runs])
    targets = list(units) if spec["targets"] == "all" else list(spec["targets"])
    pairs = comparisons.table_comparisons(TABLE, spec, units, index)
    rows = []
    for target in targets:
        for variant in spec["variants"]:
            cell = index.get((spec["source"], target, variant, spec["regime"]))
            if not cell:
                raise ValueError(f"{TABLE}: no runs given for {target} / {variant}")
            rows.append({"table": TABLE, "source": spec["source"], "regime": spec["regime"], "property": target,
                         "unit": units[target], **baseline_row(variant, cell)})
        rows += [row for row in pairs if row["property"] == target]
    return rows


def read_fusion(path: str | Path) -> list[dict[str, Any]]:
    """Rows of results/fusion.csv with numbers parsed back (the comparisons layout)."""
    return comparisons.read_comparisons(path)


def _cell(row: dict[str, Any] | None) -> str:
    """A comparison in a Markdown cell: relative difference with its interval, and the verdict."""
    if row is None:
        return ""
    if math.isnan(row["rel_diff"]):
        return f"{fmt(row['diff'], 3)} [{fmt(row['ci_low'], 3)}, {fmt(row['ci_high'], 3)}] {row['verdict']}"
    return (f"{100 * row['rel_diff']:+.1f} % [{100 * row['rel_ci_low']:+.1f}, {100 * row['rel_ci_high']:+.1f}] "
            f"**{row['verdict']}**")


def results_table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown: one line per (property, variant) with its MAE and its comparisons, referenced by column."""
    references = list(dict.fromkeys(r["reference"] for r in rows))
    head = ["property", "variant", "test MAE", *[f"vs {ref}" for ref in references]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_cell: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_cell.setdefault((row["property"], row["variant"]), {})[row["reference"]] = row
    for (prop, variant), refs in by_cell.items():
        own = refs[CONSTANT]
        mae = f"{fmt(own['mae_variant'])} {own['unit']}"
        lines.append("| " + " | ".join([prop, variant, mae, *[_cell(refs.get(ref)) for ref in references]]) + " |")
    return lines


def _verdict_counts(rows: list[dict[str, Any]]) -> str:
    by = {v: sum(r["verdict"] == v for r in rows) for v in evidence.VERDICTS}
    return f"{by[evidence.LOWER]} lower, {by[evidence.HIGHER]} higher, {by[evidence.NOT_RESOLVED]} not resolved"


def conclusions(rows: list[dict[str, Any]]) -> list[str]:
    """The section's sentences: baseline verdicts per variant, then one sentence per compared pair."""
    base = [r for r in rows if r["reference"] == CONSTANT]
    sentences = []
    for variant in dict.fromkeys(r["variant"] for r in base):
        own = [r for r in base if r["variant"] == variant]
        below = [r["property"] for r in own if r["verdict"] == evidence.LOWER]
        sentences.append(f"{variant} is clearly below the constant baseline on {len(below)} of {len(own)} properties"
                         + (f" ({', '.join(below)})" if below else "") + ".")
    pairs = [r for r in rows if r["reference"] != CONSTANT]
    return sentences + comparisons.conclusions(pairs)


def gain_resolved(rows: list[dict[str, Any]], new_variants: list[str]) -> str:
    """The plain statement the issue asks for: did any new variant resolve a gain over CrysMMNet?"""
    over = [r for r in rows if r["variant"] in new_variants and r["reference"] == "crysmmnet"]
    gains = [f"{r['variant']} on {r['property']}" for r in over if r["verdict"] == evidence.LOWER]
    if gains:
        return (f"A gain over CrysMMNet is resolved for {', '.join(gains)} ({_verdict_counts(over)} in all); with no "
                f"true difference, 95 % intervals would call a gain in about {CHANCE_GAIN * len(over):.1f} of "
                f"{len(over)} comparisons by chance (no correction for multiple comparisons).")
    return (f"No new variant resolves a gain over CrysMMNet at this scale ({_verdict_counts(over)} over "
            f"{len(over)} comparisons); config/fusion_gpu.yaml runs the same comparison where a gain of the size "
            "CAST reports could be resolved (docs/method.md §11.5).")


def _caveat(rows: list[dict[str, Any]]) -> str:
    seeds = sorted({r["n_seeds"] for r in rows})
    tests = sorted({r["n_test"] for r in rows})
    return (f"Every number below comes from results/fusion.csv: {_span(seeds)} seed{'s' * (seeds[-1] > 1)}, "
            f"{_span(tests)} test materials per property, each difference the paired mean of absolute "
            "test errors (variant minus reference, relative to the reference's MAE) with its 95 % interval over "
            "seeds and test materials (docs/method.md §7.6); the verdict is read from the interval alone.")


def _span(values: list[int]) -> str:
    return str(values[0]) if values[0] == values[-1] else f"{values[0]}–{values[-1]}"


def build_fusion(spec: dict[str, Any], *, units: dict[str, str], runs: list[Path], out_csv: Path, out_md: Path,
                 cross_attention: list[Path] | None = None, cls_attention: Path | None = None,
                 cls_layer: int = 5) -> list[dict[str, Any]]:
    """Write results/fusion.csv and its section results/fusion.md; returns the rows.

    Args:
        spec: the `tables.fusion` block {source, targets, variants, regime}.
        units: {target: unit} of the source.
        runs: summary.json of every run of the table (every seed).
        out_csv: results/fusion.csv.
        out_md: results/fusion.md (the report's fusion section).
        cross_attention: summary.csv of `crys-pipeline cross-attention` per property (may be empty).
        cls_attention: the attention stage's [CLS] summary CSV, shown beside the cross-attention shares.
        cls_layer: its layer shown (`attention.layer`, the paper's 5).
    """
    rows = fusion_rows(spec, units, runs)
    write_text(comparisons.comparisons_csv(rows), out_csv)
    section = section_markdown(rows, cross_attention or [], cls_attention, cls_layer, Path(out_md).parent)
    write_text("\n".join(section) + "\n", out_md)
    for sentence in conclusions(rows):
        log.info("%s", sentence)
    log.info("%d fusion rows from %d runs -> %s, %s", len(rows), len(runs), out_csv, out_md)
    return rows


def section_markdown(rows: list[dict[str, Any]], cross_attention: list[Path], cls_attention: Path | None,
                     cls_layer: int, md_dir: Path) -> list[str]:
    """The fusion section: caveat, generated conclusions, the table, and what the atoms attend to."""
    new = [v for v in dict.fromkeys(r["variant"] for r in rows) if v not in ("alignn", "crysmmnet")]
    lines = ["## Fusion beyond one [CLS] vector", "", _caveat(rows), "",
             "Conclusions (generated from results/fusion.csv):", "", f"- {gain_resolved(rows, new)}",
             *(f"- {s}" for s in conclusions(rows)), "", *results_table(rows), ""]
    if cross_attention:
        lines += attention_lines(cross_attention, cls_attention, cls_layer, md_dir)
    return lines


def _read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(_stdio.StringIO(Path(path).read_text())))


def _cls_shares(path: Path | None, layer: int) -> dict[str, float]:
    """{category: content share} of [CLS] in `layer` from the attention stage's summary CSV ({} without one)."""
    if path is None:
        return {}
    rows = [r for r in _read_csv(path) if r["level"] == "category" and int(r["layer"]) == layer]
    return {r["name"]: float(r["content_share_mean"]) for r in rows if r["content_share_mean"] not in ("", "nan")}


def attention_lines(summaries: list[Path], cls_attention: Path | None, cls_layer: int, md_dir: Path) -> list[str]:
    """Markdown: share of the atoms' attention per token category and property, beside [CLS]'s, and the figures."""
    read = [_read_csv(p) for p in summaries]
    tables = {rows[0]["target"]: {r["category"]: r for r in rows} for rows in read}
    cls, cls_label = _cls_shares(cls_attention, cls_layer), f"[CLS] L{cls_layer}"
    first = next(iter(tables.values()))
    head = ["category", "% of tokens", *([cls_label] if cls else []), *tables]
    lines = ["### What the atoms attend to", "",
             "Share (%) of the cross-attention of a crystal's atoms (mean over atoms and heads, then over the test "
             "materials) on each token category, special tokens left out, beside each category's share of the tokens "
             "(what uniform attention gives)" + (f" and the [CLS] attention of the attention stage ({cls_label}, the "
                                                 "paper's §4.4 analysis)" if cls else "") + ":", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for category, row in first.items():
        if category == "special":
            continue
        cells = [f"{100 * float(row['token_fraction_mean']):.1f}"]
        cells += [f"{100 * cls[category]:.1f}"] if cls else []
        cells += [f"{100 * float(t[category]['content_share_mean']):.1f}" for t in tables.values()]
        lines.append("| " + " | ".join([category, *cells]) + " |")
    special = [f"{100 * float(t['special']['share_mean']):.1f} %" for t in tables.values()]
    lines += ["", f"[CLS] and [SEP] receive {', '.join(special)} of the atoms' attention ({', '.join(tables)}).", ""]
    for prop, path in zip(tables, summaries, strict=True):
        figures = sorted((Path(path).parent / "materials").glob("*.png"))
        links = ", ".join(f"[{f.stem}]({Path(os.path.relpath(f, md_dir)).as_posix()})" for f in figures)
        lines.append(f"- {prop}: [summary]({Path(os.path.relpath(Path(path).with_suffix('.png'), md_dir)).as_posix()})"
                     + (f"; per material: {links}" if links else ""))
    return [*lines, ""]
