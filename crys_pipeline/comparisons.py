"""Stage `comparisons`: every pair of variants a table draws a conclusion from, judged by a paired interval.

For each table of the report (its `{source, targets, variants, regime}` block) and each pair of
``variants.COMPARISONS`` whose two variants the table runs (CrysMMNet vs ALIGNN, an encoder with and without
text, text alone vs graph, global/local vs full text; in the low20 regime the same pairs on 20 % of the
training data), one row per property: both MAEs (mean over seeds), the mean paired difference of the
absolute test errors, its size relative to the reference's MAE, the 95 % interval over seeds and test
materials (``evidence.paired_interval``) and the verdict read from that interval alone. Seeds are paired
by seed number; materials are the test materials every run of the pair predicted.

``conclusions`` writes the sentences the report (and the README, which quotes them) states: counts of
verdicts per question, never more than the intervals show.
"""

from __future__ import annotations

import csv
import io as _stdio
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from crys_pipeline import evidence
from crys_pipeline.io import write_text
from crys_pipeline.run_id import ModelKey
from crys_pipeline.run_results import RunResult, aligned_errors, common_test_ids, load_run_result
from crys_pipeline.variants import Comparison, comparisons_of

log = logging.getLogger(__name__)

#: Columns of results/comparisons.csv, in order.
COLUMNS = [
    "table", "source", "regime", "property", "unit", "variant", "reference", "question", "n_seeds", "n_test",
    "mae_variant", "mae_reference", "diff", "rel_diff", "ci_low", "ci_high", "rel_ci_low", "rel_ci_high",
    "verdict", "interval",
]
#: How the interval is computed (the `interval` column; docs/method.md §7.6).
INTERVAL = "95 % t interval, variance over test materials + over seeds (Welch-Satterthwaite df)"

def index_runs(runs: list[RunResult]) -> dict[ModelKey, dict[int, RunResult]]:
    """{(source, target, variant, regime): {seed: run}} (``RunId.model``).

    Raises:
        ValueError: the same run (and seed) given twice.
    """
    out: dict[ModelKey, dict[int, RunResult]] = {}
    for run in runs:
        seeds = out.setdefault(run.id.model, {})
        if run.id.seed in seeds:
            raise ValueError(f"{run.path} and {seeds[run.id.seed].path} are the same run ({run.id.key})")
        seeds[run.id.seed] = run
    return out


def compare(pair: Comparison, a: dict[int, RunResult], b: dict[int, RunResult]) -> dict[str, Any]:
    """The statistics of one pair on one property: the variant's runs `a` against the reference's `b`, by seed.

    Raises:
        ValueError: the two have no seed in common.
    """
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError(f"{pair.variant} (seeds {sorted(a)}) and {pair.reference} (seeds {sorted(b)}) share no seed")
    runs_a, runs_b = [a[s] for s in seeds], [b[s] for s in seeds]
    ids = common_test_ids(runs_a + runs_b)
    errors, _ = aligned_errors(runs_a + runs_b, ids)
    err_a, err_b = errors[: len(seeds)], errors[len(seeds):]
    interval = evidence.below(err_a, err_b)
    mae_b = float(np.mean(np.abs(err_b))) if ids else math.nan

    def rel(value: float) -> float:
        return value / mae_b if mae_b > 0 else math.nan

    return {"variant": pair.variant, "reference": pair.reference, "question": pair.question,
            "n_seeds": len(seeds), "n_test": len(ids),
            "mae_variant": float(np.mean(np.abs(err_a))) if ids else math.nan,
            "mae_reference": mae_b, "diff": interval.mean, "rel_diff": rel(interval.mean), "ci_low": interval.low,
            "ci_high": interval.high, "rel_ci_low": rel(interval.low), "rel_ci_high": rel(interval.high),
            "verdict": interval.verdict, "interval": INTERVAL if len(seeds) > 1 else INTERVAL + "; one seed: "
            "test materials only"}


def table_comparisons(table: str, spec: dict[str, Any], units: dict[str, str],
                      runs: dict[ModelKey, dict[int, RunResult]]) -> list[dict[str, Any]]:
    """The comparison rows of one table: its pairs by its properties (targets in spec order).

    Raises:
        ValueError: a cell of a compared pair has no run among those given.
    """
    targets = list(units) if spec["targets"] == "all" else list(spec["targets"])
    rows = []
    for pair in comparisons_of(list(spec["variants"])):
        for target in targets:
            cells = [runs.get((spec["source"], target, v, spec["regime"])) for v in (pair.variant, pair.reference)]
            missing = [v for v, cell in zip((pair.variant, pair.reference), cells, strict=True) if not cell]
            if missing:
                raise ValueError(f"{table}: no runs given for {target} / {missing} ({spec['source']}, "
                                 f"{spec['regime']})")
            rows.append({"table": table, "source": spec["source"], "regime": spec["regime"], "property": target,
                         "unit": units[target], **compare(pair, *cells)})
    return rows


def comparisons_csv(rows: list[dict[str, Any]]) -> str:
    """The CSV text (NaN as an empty field)."""
    out = _stdio.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if isinstance(row[k], float) and math.isnan(row[k]) else row[k] for k in COLUMNS})
    return out.getvalue()


def read_comparisons(path: str | Path) -> list[dict[str, Any]]:
    """Rows of results/comparisons.csv with numbers parsed back (empty fields become NaN).

    Raises:
        ValueError: the file lacks a column of the layout.
    """
    rows = []
    for rec in csv.DictReader(_stdio.StringIO(Path(path).read_text())):
        missing = [c for c in COLUMNS if c not in rec]
        if missing:
            raise ValueError(f"{path}: not a comparisons CSV, columns {missing} missing")
        for col in ("n_seeds", "n_test"):
            rec[col] = int(rec[col])
        for col in COLUMNS[10:18]:
            rec[col] = float(rec[col]) if rec[col] != "" else math.nan
        rows.append(rec)
    return rows


def _names(rows: list[dict[str, Any]]) -> str:
    return f" ({', '.join(r['property'] for r in rows)})" if rows else ""


def conclusions(rows: list[dict[str, Any]]) -> list[str]:
    """One sentence per (table, pair): how many properties each verdict holds for, from the intervals alone."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["table"], row["variant"], row["reference"]), []).append(row)
    sentences = []
    for (table, variant, reference), group in groups.items():
        by = {v: [r for r in group if r["verdict"] == v] for v in evidence.VERDICTS}
        seeds = sorted({r["n_seeds"] for r in group})
        tests = sorted({r["n_test"] for r in group})
        point = sum(r["diff"] < 0 for r in group)
        sentences.append(
            f"{table}, {group[0]['question']} ({variant} vs {reference}, {group[0]['regime']}, {_span(seeds)} "
            f"seeds, {_span(tests)} test materials): lower mean MAE on {point} of {len(group)} properties; by the "
            f"95 % interval lower on {len(by[evidence.LOWER])}{_names(by[evidence.LOWER])}, higher on "
            f"{len(by[evidence.HIGHER])}{_names(by[evidence.HIGHER])}, not resolved on "
            f"{len(by[evidence.NOT_RESOLVED])}{_names(by[evidence.NOT_RESOLVED])}."
        )
    return sentences


def _span(values: list[int]) -> str:
    return str(values[0]) if values[0] == values[-1] else f"{values[0]}–{values[-1]}"


def build_comparisons(specs: dict[str, dict[str, Any]], *, units: dict[str, dict[str, str]], runs: list[Path],
                      out_csv: Path) -> list[dict[str, Any]]:
    """Compare the pairs of every table in `specs` and write the CSV; returns the rows.

    Args:
        specs: table name -> its config block {source, targets, variants, regime}.
        units: source -> {target: unit}.
        runs: summary.json of every run of those tables (every seed).
        out_csv: results/comparisons.csv.
    """
    index = index_runs([load_run_result(Path(p)) for p in runs])
    rows = []
    for table, spec in specs.items():
        rows += table_comparisons(table, spec, units[spec["source"]], index)
    write_text(comparisons_csv(rows), out_csv)
    for sentence in conclusions(rows):
        log.info("%s", sentence)
    log.info("%d comparisons of %d tables from %d runs -> %s", len(rows), len(specs), len(runs), out_csv)
    return rows
