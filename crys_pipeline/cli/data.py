"""Subcommands of the data stages: download, ingest, splits, describe, sections, embed, graphs, and inspect.

Each is a short adapter: it parses arguments, imports its stage module lazily and calls one typed function.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from crys_pipeline import settings
from crys_pipeline.cli.common import optional_path


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
    p.add_argument("--root-dir", type=optional_path, default=None, help="folder source: the structure files")
    p.add_argument("--id-prop", default="id_prop.csv", help="folder source: the table of filename,target rows")
    p.add_argument("--file-format", default="auto", help="folder source: auto | poscar | cif | vasp | xyz")
    p.add_argument("--split-ids", type=json.loads, default=None, help="folder source: JSON {train,val,test: [ids]}")
    p.add_argument("--snapshot-dir", type=optional_path, default=None, help="local snapshot folder")
    p.add_argument("--download-dir", type=Path, default=Path("resources/downloads"))
    p.add_argument("--out", type=Path, required=True, help="manifest JSON")
    p.set_defaults(handler=_run_download)


def _run_download(a: argparse.Namespace) -> None:
    from crys_pipeline import download
    from crys_pipeline.sources import folder

    if a.provider == "folder":
        if a.root_dir is None:
            raise ValueError("download --provider folder needs --root-dir (the folder of structure files)")
        folder.fetch_folder(a.source, root_dir=a.root_dir, id_prop=a.id_prop, file_format=a.file_format,
                            split_ids=a.split_ids, out=a.out)
        return
    download.fetch(a.source, provider=a.provider, jarvis_key=a.jarvis_key, snapshot_dir=a.snapshot_dir,
                   download_dir=a.download_dir, out=a.out)


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

    ingest.ingest(a.manifest, targets=a.targets, subset=a.subset, stratify_target=a.stratify_target,
                  out=a.out, rejected_out=a.rejected)


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

    describe.describe_shard(a.structures, shard=a.shard,
                            settings=settings.from_arguments(settings.DescribeSettings, a), workers=a.workers,
                            out=a.out)


def _run_describe_merge(a: argparse.Namespace) -> None:
    from crys_pipeline import describe

    describe.merge_shards(a.structures, shards=a.shards, out=a.out)


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
    p.add_argument("--structures", type=optional_path, default=None,
                   help="results/structures/{source}.parquet: the descriptions must have been made from it")
    settings.add_arguments(p, settings.SectionsSettings)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(handler=_run_sections)


def _run_sections(a: argparse.Namespace) -> None:
    from crys_pipeline import sections

    chosen = settings.from_arguments(settings.SectionsSettings, a)
    sections.build_sections(a.descriptions, global_header=chosen.global_header, out=a.out,
                            structures=a.structures)


# --- embed ----------------------------------------------------------------------------------------
def _add_embed(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed",
        help="frozen text-encoder embeddings of every text view -> results/embeddings/{source}.h5",
        description="HDF5 with `material_id`, `status`, `error` [N] and per text view (full, global, local) a "
        "float32 [N, D] matrix plus untruncated token counts, truncated and empty flags; attributes record the "
        "encoder, revision, pooling, max length, normaliser, dtype and versions. Built in OUT.partial in chunks: "
        "a killed job resumes after its last finished chunk.",
    )
    p.add_argument("--sections", type=Path, required=True, help="results/text/{source}/sections.parquet")
    p.add_argument("--structures", type=optional_path, default=None,
                   help="results/structures/{source}.parquet: the sections must have been made from it")
    settings.add_arguments(p, settings.EmbedSettings)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(handler=_run_embed)


def _run_embed(a: argparse.Namespace) -> None:
    from crys_pipeline import embed

    embed.embed_sections(a.sections, out=a.out, settings=settings.from_arguments(settings.EmbedSettings, a),
                         threads=a.threads, structures=a.structures)


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

    graphs.build_graphs(a.structures, params=settings.from_arguments(settings.GraphSettings, a), workers=a.workers,
                        out_dir=a.out_dir)


# --- inspect --------------------------------------------------------------------------------------
def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="verify any artifact (file or graph/run folder), then print its schema, counts, stamps and first rows",
        description="Checks the artifact's integrity first (checksums, layout, the sha256 recorded for it by its "
        "folder's manifest.json / summary.json / model.json; a table is rebuilt from its runs' summaries) and "
        "exits 1 naming the file when it is damaged. Covers every artifact of the README's table: snapshot "
        "manifests, structures, splits, descriptions, sections, embeddings, a graph folder or shard, a run folder "
        "or its model.pt, model.json, metrics.jsonl, predictions.parquet, summary.json, and table CSV/Markdown.",
    )
    p.add_argument("path", type=Path, help="an artifact file, a graph folder or a run folder")
    p.add_argument("--rows", type=int, default=5, help="how many first rows to show")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="print what can be read without checking integrity (e.g. a file to be repaired)")
    p.set_defaults(handler=_run_inspect)


def _run_inspect(a: argparse.Namespace) -> None:
    from crys_pipeline import inspection

    print(inspection.describe_artifact(a.path, a.rows, verify=a.verify))


#: This module's subcommands, in `crys-pipeline --help` order.
SUBCOMMANDS = [_add_download, _add_ingest, _add_splits, _add_describe, _add_sections, _add_embed, _add_graphs,
               _add_inspect]
