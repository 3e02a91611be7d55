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
from collections.abc import Callable
from pathlib import Path

from crys_pipeline import settings
from crys_pipeline.variants import VARIANTS

Handler = Callable[[argparse.Namespace], int | None]


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
    p.add_argument("--provider", choices=["jarvis", "mp", "folder"], required=True)
    p.add_argument("--jarvis-key", default="", help="jarvis-tools figshare key (dft_3d_2021, megnet)")
    p.add_argument("--root-dir", type=_optional_path, default=None, help="folder source: the structure files")
    p.add_argument("--id-prop", default="id_prop.csv", help="folder source: the table of filename,target rows")
    p.add_argument("--file-format", default="auto", help="folder source: auto | poscar | cif | vasp | xyz")
    p.add_argument("--split-ids", type=json.loads, default=None, help="folder source: JSON {train,val,test: [ids]}")
    p.add_argument("--snapshot-dir", type=_optional_path, default=None, help="local snapshot folder")
    p.add_argument("--download-dir", type=Path, default=Path("resources/downloads"))
    p.add_argument("--out", type=Path, required=True, help="manifest JSON")
    p.set_defaults(handler=_run_download)


def _run_download(a: argparse.Namespace) -> None:
    from crys_pipeline import download, folder

    if a.provider == "folder":
        if a.root_dir is None:
            raise ValueError("download --provider folder needs --root-dir (the folder of structure files)")
        folder.fetch_folder(a.source, a.root_dir, a.id_prop, a.file_format, a.split_ids, a.out)
        return
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
    settings.add_arguments(p, settings.SplitSettings)
    p.add_argument("--out-full", type=Path, required=True)
    p.add_argument("--out-low20", type=Path, required=True)
    p.set_defaults(handler=_run_splits)


def _run_splits(a: argparse.Namespace) -> None:
    from crys_pipeline import splits

    splits.make_splits(a.structures, target=a.target, method=a.method,
                       settings=settings.from_arguments(settings.SplitSettings, a), out_full=a.out_full,
                       out_low20=a.out_low20)


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

    print(inspect.describe_artifact(a.path, a.rows))


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


# --- describe -------------------------------------------------------------------------------------
def _add_describe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "describe",
        help="Robocrystallographer descriptions: `shard` describes one scattergather shard, `merge` gathers them",
        description="shard: one row per material of shard I-of-N (rows i with i %% N == I-1) of the structures "
        "table: robocrys parts (mineral, component_makeup, components), full text, space group number, crystal "
        "system, dimensionality, status ok/failed/timeout, error, elapsed_s; robocrys/pymatgen/spglib versions in "
        "the metadata. merge: the shards in the structures table's order, every id exactly once.",
    )
    steps = p.add_subparsers(dest="step", required=True)
    shard = steps.add_parser("shard", help="describe one shard of a structures table")
    shard.add_argument("--structures", type=Path, required=True, help="results/structures/{source}.parquet")
    shard.add_argument("--shard", required=True, help="scattergather item I-of-N, e.g. 2-of-4")
    settings.add_arguments(shard, settings.DescribeSettings)
    shard.add_argument("--workers", type=int, default=1, help="robocrys worker processes")
    shard.add_argument("--out", type=Path, required=True, help="results/text/{source}/describe/{shard}.parquet")
    shard.set_defaults(handler=_run_describe_shard)
    merge = steps.add_parser("merge", help="gather describe shards into one table in input order")
    merge.add_argument("--structures", type=Path, required=True)
    merge.add_argument("--out", type=Path, required=True, help="results/text/{source}/descriptions.parquet")
    merge.add_argument("shards", type=Path, nargs="+", help="shard Parquet files")
    merge.set_defaults(handler=_run_describe_merge)


def _run_describe_shard(a: argparse.Namespace) -> None:
    from crys_pipeline import describe

    describe.describe_shard(a.structures, a.shard, settings.from_arguments(settings.DescribeSettings, a), a.workers,
                            a.out)


def _run_describe_merge(a: argparse.Namespace) -> None:
    from crys_pipeline import describe

    describe.merge_shards(a.structures, a.shards, a.out)


# --- sections -------------------------------------------------------------------------------------
def _add_sections(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sections",
        help="full / global / local texts from the robocrys parts -> results/text/{source}/sections.parquet",
        description="global = mineral + component makeup parts, local = components part, full = both (robocrys' "
        "text); with --global-header a templated header (space group number, crystal system, dimensionality) is "
        "prepended to full and global. Failed descriptions stay as rows with empty texts.",
    )
    p.add_argument("--descriptions", type=Path, required=True, help="results/text/{source}/descriptions.parquet")
    p.add_argument("--structures", type=_optional_path, default=None,
                   help="results/structures/{source}.parquet: the descriptions must have been made from it")
    settings.add_arguments(p, settings.SectionsSettings)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(handler=_run_sections)


def _run_sections(a: argparse.Namespace) -> None:
    from crys_pipeline import sections

    chosen = settings.from_arguments(settings.SectionsSettings, a)
    sections.build_sections(a.descriptions, chosen.global_header, a.out, a.structures)


# --- report ---------------------------------------------------------------------------------------
def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="results/report.md + PNGs: parity plots, learning curves, standing against the paper",
        description="Per property a parity plot (test split, one panel per variant) and learning curves "
        "(val/test MAE per epoch), and per table a summary of our MAE against the paper's.",
    )
    p.add_argument("--table", dest="tables", type=Path, action="append", required=True, metavar="CSV",
                   help="a table CSV written by `crys-pipeline tables` (repeat per table)")
    p.add_argument("--out-md", type=Path, required=True)
    p.add_argument("--fig-dir", type=Path, required=True, help="folder for the PNGs")
    p.add_argument("runs", type=Path, nargs="+", help="summary.json of every run of the tables")
    p.set_defaults(handler=_run_report)


def _run_report(a: argparse.Namespace) -> None:
    from crys_pipeline import report

    report.build_report(a.tables, a.runs, a.out_md, a.fig_dir)


# --- embed ----------------------------------------------------------------------------------------
def _add_embed(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed",
        help="frozen text-encoder embeddings of every text variant -> results/embeddings/{source}.h5",
        description="HDF5 with `material_id`, `status`, `error` [N] and per text variant (full, global, local) a "
        "float32 [N, D] matrix plus untruncated token counts, truncated and empty flags; attributes record the "
        "encoder, revision, pooling, max length, normaliser, dtype and versions. Built in OUT.partial in chunks: "
        "a killed job resumes after its last finished chunk.",
    )
    p.add_argument("--sections", type=Path, required=True, help="results/text/{source}/sections.parquet")
    p.add_argument("--structures", type=_optional_path, default=None,
                   help="results/structures/{source}.parquet: the sections must have been made from it")
    settings.add_arguments(p, settings.EmbedSettings)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(handler=_run_embed)


def _run_embed(a: argparse.Namespace) -> None:
    from crys_pipeline import embed

    embed.embed_sections(a.sections, a.out, settings.from_arguments(settings.EmbedSettings, a), threads=a.threads,
                         structures=a.structures)


# --- graphs ---------------------------------------------------------------------------------------
def _add_graphs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "graphs",
        help="structures -> results/graphs/{source}/shard-NNNNN.parquet + manifest.json (ALIGNN k-NN graphs)",
        description="One row per crystal: material_id, status, error, natoms, nedges, cutoff (after growth), "
        "z (atomic numbers), edge_index (2 x E, source row first), edge_vec (E x 3 float32 bond vectors). "
        "The graph parameters are stamped in every shard; readers refuse shards made with other ones. "
        "manifest.json lists the shards, ok/failed counts and the params.",
    )
    p.add_argument("--structures", type=Path, required=True, help="structures Parquet (ingest output)")
    settings.add_arguments(p, settings.GraphSettings)
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--out-dir", type=Path, required=True)
    p.set_defaults(handler=_run_graphs)


def _run_graphs(a: argparse.Namespace) -> None:
    from crys_pipeline import graphs

    graphs.build_graphs(a.structures, settings.from_arguments(settings.GraphSettings, a), a.workers, a.out_dir)


# --- train ----------------------------------------------------------------------------------------
def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="fit one variant on one (source, target, regime, seed) -> results/train/.../seed{seed}/",
        description="Writes model.pt (val-best state dict), model.json (constructor args, versions, input "
        "params and hashes), metrics.jsonl (per epoch: train loss, val MAE, test MAE, lr, seconds), "
        "predictions.parquet (material_id, split, target, prediction) and summary.json (val-selected, "
        "last-epoch and min test MAE, counts, dropped ids with reasons). A checkpoint.pt in --out-dir "
        "makes a killed job resume after its last finished epoch.",
    )
    p.add_argument("--structures", type=Path, required=True, help="results/structures/{source}.parquet")
    p.add_argument("--split", type=Path, required=True, help="results/splits/{source}/{target}/{regime}.json")
    p.add_argument("--graphs", type=_optional_path, default=None, help="graph shard folder; '' = not used")
    p.add_argument("--embeddings", type=_optional_path, default=None, help="embeddings HDF5; '' = not used")
    p.add_argument("--target", required=True)
    p.add_argument("--variant", required=True, choices=list(VARIANTS), help="model variant")
    p.add_argument("--seed", type=int, required=True, help="model seed (torch, numpy, random)")
    settings.add_arguments(p, settings.TrainSettings)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    p.add_argument("--out-dir", type=Path, required=True)
    p.set_defaults(handler=_run_train)


def _run_train(a: argparse.Namespace) -> None:
    from crys_pipeline import train

    cfg = settings.from_arguments(train.TrainConfig, a, {"target": a.target, "variant": a.variant, "seed": a.seed,
                                                         "threads": a.threads})
    train.train(a.structures, a.split, a.graphs, a.embeddings, a.out_dir, cfg)


# --- attention ------------------------------------------------------------------------------------
def _config_block(path: Path, key: str) -> dict:
    """One block of a config file, or {} when the file does not exist (then the built-in defaults apply)."""
    import yaml

    return (yaml.safe_load(path.read_text()) or {}).get(key) or {} if path.is_file() else {}


def _add_encoder_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=Path("config.yaml"),
                   help="config file whose `embed` and `attention` blocks give the defaults of the flags not given "
                   "(default config.yaml; built-in defaults without it)")
    settings.add_arguments(p, settings.EmbedSettings, names=settings.ENCODER_FIELDS)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")


def _encoder_and_analysis(a: argparse.Namespace) -> tuple[settings.EmbedSettings, settings.AttentionSettings]:
    """The encoder and analysis settings: flags given, else the --config file's blocks, else the defaults."""
    from crys_pipeline.devices import set_threads

    set_threads(a.threads)
    return (settings.from_arguments(settings.EmbedSettings, a, _config_block(a.config, "embed")),
            settings.from_arguments(settings.AttentionSettings, a, _config_block(a.config, "attention")))


def _add_attention(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "attention",
        help="plot the [CLS] attention of one layer over one material's description",
        description="Writes OUT_DIR/{source}/{id}_L{layer}.png (the text word by word, word pieces merged, "
        "coloured by [CLS] attention averaged over heads, encoder named in the title) and "
        "{id}_L{layer}.parquet (kind `attention`: token, word, category, head, weight). Encoder options "
        "default to the `embed` block of --config, --layer/--variant to its `attention` block.",
    )
    p.add_argument("--source", required=True, help="source name (config key)")
    p.add_argument("--id", dest="material_id", required=True, help="material id")
    settings.add_arguments(p, settings.AttentionSettings, names=("layer", "variant"))
    p.add_argument("--sections", type=Path, default=None,
                   help="sections table (default: results/text/{source}/sections.parquet)")
    p.add_argument("--out-dir", type=Path, default=Path("results/attention"))
    p.add_argument("--out-png", type=Path, default=None, help="overrides OUT_DIR/{source}/{id}_L{layer}.png")
    p.add_argument("--out-table", type=Path, default=None, help="overrides OUT_DIR/{source}/{id}_L{layer}.parquet")
    p.add_argument("--wrap", type=int, default=110, help="characters per plotted line")
    _add_encoder_options(p)
    p.set_defaults(handler=_run_attention)


def _run_attention(a: argparse.Namespace) -> None:
    from crys_pipeline import attention

    encoder, analysis = _encoder_and_analysis(a)
    stem = a.out_dir / a.source / f"{a.material_id}_L{analysis.layer}"
    attention.plot_material(a.sections or Path(f"results/text/{a.source}/sections.parquet"), a.material_id,
                            analysis.layer, analysis.variant, encoder, a.out_png or stem.with_suffix(".png"),
                            a.out_table or stem.with_suffix(".parquet"), a.wrap)


def _add_attention_summary(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "attention-summary",
        help="share of [CLS] attention per token category and layer over a sample of materials",
        description="Writes a CSV (per layer and category: attention share, share of tokens, enrichment), "
        "its heatmap PNG and a per-material Parquet (kind `attention_shares`; failed rows with the reason).",
    )
    p.add_argument("--sections", type=Path, required=True)
    settings.add_arguments(p, settings.AttentionSettings, names=("variant", "sample", "seed"))
    p.add_argument("--out-csv", type=Path, required=True)
    p.add_argument("--out-png", type=Path, required=True)
    p.add_argument("--out-shares", type=Path, required=True)
    _add_encoder_options(p)
    p.set_defaults(handler=_run_attention_summary)


def _run_attention_summary(a: argparse.Namespace) -> None:
    from crys_pipeline import attention

    encoder, analysis = _encoder_and_analysis(a)
    attention.summarize(a.sections, analysis.variant, analysis.sample, analysis.seed, encoder, a.out_csv, a.out_png,
                        a.out_shares)


# --- predict --------------------------------------------------------------------------------------
def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="predict a property for CIF/POSCAR files with trained runs (several seeds: mean +- std)",
        description="Builds graph, robocrys description and text embedding of each structure with the settings "
        "the runs were trained with (model.json), prints one row per file with every run's prediction, their "
        "mean and std, and notes (unreadable file, failed or truncated description). Exit status 1 when a file "
        "could not be predicted; the others are still reported.",
    )
    p.add_argument("--model", type=Path, nargs="+", required=True, metavar="RUN_DIR",
                   help="run folders results/train/{source}/{target}/{variant}/{regime}/seed{seed}")
    p.add_argument("files", type=Path, nargs="*", help="CIF, POSCAR/CONTCAR or *.vasp files, or folders of them "
                   "(may also follow the run folders: paths after --model without a model.json are inputs)")
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
    crystals, table = predict.run_predict(runs, files)
    print(table)
    if a.out:
        predict.write_csv(crystals, a.out)
    return 1 if predict.has_failures(crystals) else 0


STAGES: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_download,
    _add_ingest,
    _add_splits,
    _add_describe,
    _add_sections,
    _add_embed,
    _add_graphs,
    _add_train,
    _add_inspect,
    _add_export_leaderboard,
    _add_predict,
    _add_tables,
    _add_report,
    _add_attention,
    _add_attention_summary,
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
    from crys_pipeline.lifecycle import watch_workflow

    watch_workflow()  # a killed snakemake takes this job with it (no orphan beside the rerun's copy)
    try:
        status = args.handler(args)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        logging.getLogger("crys_pipeline").error("%s", exc)
        return 1
    return int(status or 0)
