"""`crys-pipeline` command line: one subcommand per pipeline stage.

Each subcommand is a short adapter: it parses arguments, imports its stage module lazily (so
`--help` stays instant and heavy libraries load only where needed) and calls one typed function
that knows nothing of Snakemake. Logging goes to stderr; Snakemake rules redirect it to `logs/`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable

Handler = Callable[[argparse.Namespace], int | None]


def _bool_flag(parser: argparse.ArgumentParser, name: str, default: bool, help_text: str) -> None:
    parser.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=default, help=help_text)


def _optional_path(value: str) -> Path | None:
    return Path(value) if value else None


# --- download -------------------------------------------------------------------------------------
def _add_download(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "download",
        help="fetch or locate a source snapshot; writes a manifest with sha256",
        description="Writes resources/snapshots/{source}.json: the snapshot files used, their sha256 and "
        "where they came from (local snapshot dir, or a jarvis-tools / mp-api download).",
    )
    p.add_argument("--source", required=True, help="source name (config key)")
    p.add_argument("--provider", choices=["jarvis", "mp"], required=True)
    p.add_argument("--jarvis-key", required=True, help="jarvis-tools figshare key (dft_3d_2021, megnet)")
    p.add_argument("--snapshot-dir", type=_optional_path, default=None, help="local snapshot folder")
    p.add_argument("--download-dir", type=Path, default=Path("resources/downloads"))
    p.add_argument("--out", type=Path, required=True, help="manifest JSON")
    p.set_defaults(handler=_run_download)


def _run_download(a: argparse.Namespace) -> None:
    from crys_pipeline import download

    download.fetch(a.source, a.provider, a.jarvis_key, a.snapshot_dir, a.download_dir, a.out)


# --- ingest ---------------------------------------------------------------------------------------
def _add_ingest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ingest",
        help="snapshot -> results/structures/{source}.parquet (+ .rejected.parquet)",
        description="One row per material (id, formula, natoms, lattice, species, frac_coords, every target, "
        "split label per target); records that fail validation go to the rejected file with a reason.",
    )
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--targets", type=json.loads, required=True, help="JSON of the source's target definitions")
    p.add_argument("--subset", type=json.loads, default=None, help="JSON {train,val,test} counts or null")
    p.add_argument("--stratify-target", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--rejected", type=Path, required=True)
    p.set_defaults(handler=_run_ingest)


def _run_ingest(a: argparse.Namespace) -> None:
    from crys_pipeline import ingest

    ingest.ingest(a.manifest, a.targets, a.subset, a.stratify_target, a.out, a.rejected)


# --- splits ---------------------------------------------------------------------------------------
def _add_splits(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "splits",
        help="train/val/test id lists (full and low20) for one target",
        description="Writes two JSON files {id_train, id_val, id_test, hash, ...}: the full regime and the "
        "20%%-train regime whose val/test equal the full regime's.",
    )
    p.add_argument("--structures", type=Path, required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--method", choices=["official", "random123"], default="official")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--train-ratio", type=float, default=0.8)
    p.add_argument("--val-ratio", type=float, default=0.1)
    p.add_argument("--test-ratio", type=float, default=0.1)
    p.add_argument("--low20-train-ratio", type=float, default=0.2)
    p.add_argument("--out-full", type=Path, required=True)
    p.add_argument("--out-low20", type=Path, required=True)
    p.set_defaults(handler=_run_splits)


def _run_splits(a: argparse.Namespace) -> None:
    from crys_pipeline import splits

    splits.make_splits(
        a.structures, a.target, a.method, a.seed, (a.train_ratio, a.val_ratio, a.test_ratio),
        a.low20_train_ratio, a.out_full, a.out_low20,
    )


# --- inspect --------------------------------------------------------------------------------------
def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="print schema, row count, version stamps and first rows of a Parquet/HDF5/JSON artifact",
    )
    p.add_argument("path", type=Path)
    p.add_argument("--rows", type=int, default=5, help="how many first rows to show")
    p.set_defaults(handler=_run_inspect)


def _run_inspect(a: argparse.Namespace) -> None:
    from crys_pipeline import inspect

    print(inspect.describe_artifact(a.path, a.rows))  # noqa: T201 - the command's output


# --- export-leaderboard ---------------------------------------------------------------------------
def _add_export_leaderboard(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-leaderboard",
        help="write a run's test predictions as a JARVIS-Leaderboard contribution (csv.zip + metadata.json)",
    )
    p.add_argument("run_dir", type=Path, help="results/train/{source}/{target}/{variant}/{regime}/seed{seed}")
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
    leaderboard.export_leaderboard(a.run_dir, a.out_dir or a.run_dir / "leaderboard", contact)


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

    tables.build_table(a.table, a.spec, a.units, a.runs, a.out_csv, a.out_md)


# --- report ---------------------------------------------------------------------------------------
def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="results/report.md + PNGs: parity plots, learning curves, standing against the paper",
        description="Per property a parity plot (test split, one panel per variant) and learning curves "
        "(val/test MAE per epoch), and per table a summary of our MAE against the paper's.",
    )
    p.add_argument("--table", dest="tables", type=Path, action="append", required=True,
                   help="a table CSV written by `crys-pipeline tables` (repeat per table)")
    p.add_argument("--out-md", type=Path, required=True)
    p.add_argument("--fig-dir", type=Path, required=True, help="folder for the PNGs")
    p.add_argument("runs", type=Path, nargs="+", help="summary.json of every run of the tables")
    p.set_defaults(handler=_run_report)


def _run_report(a: argparse.Namespace) -> None:
    from crys_pipeline import report

    report.build_report(a.tables, a.runs, a.out_md, a.fig_dir)


STAGES: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_download,
    _add_ingest,
    _add_splits,
    _add_inspect,
    _add_export_leaderboard,
    _add_tables,
    _add_report,
]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with one subcommand per stage."""
    parser = argparse.ArgumentParser(
        prog="crys-pipeline",
        description="CrysMMNet pipeline stages. Each subcommand reads and writes one artifact kind; "
        "Snakemake (see the Snakefile) chains them.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")
    for add in STAGES:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; returns the process exit status (1 on a handled error)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        status = args.handler(args)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        logging.getLogger("crys_pipeline").error("%s", exc)
        return 1
    return int(status or 0)
