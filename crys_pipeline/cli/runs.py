"""Subcommands of training and its products: train, predict, tables, report, export-leaderboard.

Each is a short adapter: it parses arguments, imports its stage module lazily and calls one typed function.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from crys_pipeline import settings
from crys_pipeline.cli.common import optional_path
from crys_pipeline.run_id import RunId
from crys_pipeline.variants import VARIANTS


# --- train ----------------------------------------------------------------------------------------
def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help=f"fit one variant on one (source, target, regime, seed) -> {RunId.PATTERN}/",
        description="Writes model.pt (val-best state dict), model.json (the model's settings whole, versions, "
        "input params and hashes), metrics.jsonl (per epoch: train loss, val MAE, test MAE, lr, seconds), "
        "predictions.parquet (material_id, split, target, prediction) and summary.json (val-selected, "
        "last-epoch and min test MAE, counts, dropped ids with reasons). A checkpoint.pt in --out-dir "
        "makes a killed job resume after its last finished epoch.",
    )
    p.add_argument("--structures", type=Path, required=True, help="results/structures/{source}.parquet")
    p.add_argument("--split", type=Path, required=True, help="results/splits/{source}/{target}/{regime}.json")
    p.add_argument("--graphs", type=optional_path, default=None, help="graph shard folder; '' = not used")
    p.add_argument("--embeddings", type=optional_path, default=None, help="embeddings HDF5; '' = not used")
    p.add_argument("--tokens", type=optional_path, default=None,
                   help="token-states HDF5 (cross-attention variants); '' = not used")
    p.add_argument("--target", required=True)
    p.add_argument("--variant", required=True, choices=list(VARIANTS), help="model variant")
    p.add_argument("--seed", type=int, required=True, help="model seed (torch, numpy, random)")
    settings.add_arguments(p, settings.TrainSettings)
    settings.add_arguments(p, settings.ModelSettings)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    p.add_argument("--out-dir", type=Path, required=True)
    p.set_defaults(handler=_run_train)


def _run_train(a: argparse.Namespace) -> None:
    from crys_pipeline import train

    model = settings.from_arguments(settings.ModelSettings, a)
    cfg = settings.from_arguments(train.TrainConfig, a, {"target": a.target, "variant": a.variant, "seed": a.seed,
                                                         "model": model, "threads": a.threads})
    train.train(a.structures, split=a.split, graphs=a.graphs, embeddings=a.embeddings, out_dir=a.out_dir,
                cfg=cfg, tokens=a.tokens)


# --- predict --------------------------------------------------------------------------------------
def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="predict a property for CIF/POSCAR/XYZ files with trained runs (several seeds: mean +- std)",
        description="Builds graph, robocrys description and text embedding of each structure with the settings "
        "the runs were trained with (model.json), prints one row per file (its id is the file name, as the folder "
        "source names materials) with every run's prediction, their mean (in the target's unit) and std, and notes "
        "(unreadable file, failed or truncated description, far from the training data, a negative value of a "
        "target that is never negative in training). Exit status 1 when a file could not be predicted (the others "
        "are still reported) or a folder holds no structure file.",
    )
    p.add_argument("--model", type=Path, nargs="+", required=True, metavar="RUN_DIR",
                   help=f"run folders {RunId.PATTERN}")
    p.add_argument("files", type=Path, nargs="*", help="CIF, POSCAR/CONTCAR, *.vasp or extended XYZ files, or folders "
                   "of them (may also follow the run folders: paths after --model without a model.json are inputs)")
    p.add_argument("--out", type=Path, default=None, help="also write the table as CSV")
    p.set_defaults(handler=_run_predict)


def _run_predict(a: argparse.Namespace) -> int:
    from crys_pipeline import predict

    runs = [p for p in a.model if (p / "model.json").is_file()]
    files = [p for p in a.model if not (p / "model.json").is_file()] + a.files
    if not runs:
        raise ValueError(f"no run folder (with model.json) among --model {[str(p) for p in a.model]}")
    if not files:
        raise ValueError("no structure files given")
    crystals, table = predict.predict_files(runs, paths=files)
    print(table)
    if a.out:
        predict.write_csv(crystals, a.out)
    return 1 if predict.has_failures(crystals) else 0


# --- tables ---------------------------------------------------------------------------------------
def _add_tables(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tables",
        help="paper table (CSV + Markdown) from run summaries: MAE mean/std over seeds vs the paper",
        description="One row per (target, variant) of the table spec: unit, text encoder, n train/val/test, "
        "test MAE mean and std over seeds, seed count, last-epoch MAE, the paper's MAE and our ratio to it, "
        "split hash. Fails if a run's summary disagrees with the spec or a cell has no run.",
    )
    p.add_argument("--table", required=True, help="table name (table1..table6)")
    p.add_argument("--spec", type=json.loads, required=True, help="JSON {source, targets, variants, regime}")
    p.add_argument("--units", type=json.loads, required=True, help="JSON {target: unit} of the source")
    p.add_argument("--out-csv", type=Path, required=True)
    p.add_argument("--out-md", type=Path, required=True)
    p.add_argument("runs", type=Path, nargs="+", help="summary.json of every run (every seed) of the table")
    p.set_defaults(handler=_run_tables)


def _run_tables(a: argparse.Namespace) -> None:
    from crys_pipeline import tables

    tables.build_table(a.table, spec=a.spec, units=a.units, runs=a.runs, out_csv=a.out_csv, out_md=a.out_md)


# --- comparisons ----------------------------------------------------------------------------------
def _add_comparisons(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "comparisons",
        help="results/comparisons.csv: each pair of variants a table concludes from, by a paired interval",
        description="For each table and each pair of variants it runs (CrysMMNet vs ALIGNN, an encoder with and "
        "without text, text alone vs graph, global/local vs full text), one row per property: both MAEs, the mean "
        "paired difference of absolute test errors, its relative size, a 95 % interval over seeds and test "
        "materials and the verdict (lower, higher, not resolved) read from the interval alone.",
    )
    p.add_argument("--specs", type=json.loads, required=True,
                   help="JSON {table: {source, targets, variants, regime}} of the tables compared")
    p.add_argument("--units", type=json.loads, required=True, help="JSON {source: {target: unit}}")
    p.add_argument("--out-csv", type=Path, required=True)
    p.add_argument("runs", type=Path, nargs="+", help="summary.json of every run (every seed) of those tables")
    p.set_defaults(handler=_run_comparisons)


def _run_comparisons(a: argparse.Namespace) -> None:
    from crys_pipeline import comparisons

    comparisons.build_comparisons(a.specs, units=a.units, runs=a.runs, out_csv=a.out_csv)


# --- report ---------------------------------------------------------------------------------------
def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="results/report.md + PNGs: parity plots, learning curves, standing against the paper",
        description="Per property a parity plot (test split, one panel per variant) and learning curves "
        "(val/test MAE per epoch), and per table a summary of our MAE against the paper's.",
    )
    p.add_argument("--table", dest="tables", type=Path, action="append", default=[], metavar="CSV",
                   help="a table CSV written by `crys-pipeline tables` (repeat per table)")
    p.add_argument("--fusion", type=Path, default=None, help="results/fusion.md, the fusion section to include")
    p.add_argument("--comparisons", type=Path, required=True, help="results/comparisons.csv of those tables")
    p.add_argument("--out-md", type=Path, required=True)
    p.add_argument("--fig-dir", type=Path, required=True, help="folder for the PNGs")
    p.add_argument("runs", type=Path, nargs="+", help="summary.json of every run of the tables")
    p.set_defaults(handler=_run_report)


def _run_report(a: argparse.Namespace) -> None:
    from crys_pipeline import report

    report.build_report(a.tables, comparisons=a.comparisons, summaries=a.runs, out_md=a.out_md, fig_dir=a.fig_dir,
                        fusion=a.fusion)


# --- export-leaderboard ---------------------------------------------------------------------------
def _add_export_leaderboard(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-leaderboard",
        help="write a run's test predictions as a JARVIS-Leaderboard contribution (csv.zip + metadata.json)",
    )
    p.add_argument("run_dir", type=Path, help=RunId.PATTERN)
    p.add_argument("--out-dir", type=Path, default=None, help="contribution folder (default: RUN_DIR/leaderboard)")
    p.add_argument("--project-url", default="", help="metadata project_url")
    p.add_argument("--author-email", default="", help="metadata author_email")
    p.add_argument("--team-name", default="crys_pipeline", help="metadata team_name")
    p.add_argument("--git-url", default="", help="metadata git_url")
    p.set_defaults(handler=_run_export_leaderboard)


def _run_export_leaderboard(a: argparse.Namespace) -> None:
    from crys_pipeline import leaderboard

    contact = {"project_url": a.project_url, "author_email": a.author_email, "team_name": a.team_name,
               "git_url": a.git_url}
    leaderboard.export_leaderboard(a.run_dir, out_dir=a.out_dir or a.run_dir / "leaderboard", contact=contact)


#: This module's subcommands, in `crys-pipeline --help` order.
SUBCOMMANDS = [_add_train, _add_predict, _add_tables, _add_comparisons, _add_report, _add_export_leaderboard]
