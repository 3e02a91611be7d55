"""Fault injection over every artifact kind: is each damaged or swapped file refused, naming it?

Builds two small pipelines on real JARVIS structures with the stage functions the rules call (A:
8 materials, B: another 8, so B's files are valid files of the same kind from another build), plus
two seeds of a 1-epoch CrysMMNet run on A. Then, for each artifact (structures, splits,
descriptions, sections, embeddings, a graph shard, and a run's summary.json, model.json, model.pt,
metrics.jsonl, predictions.parquet) and each fault (truncate to half, flip 16 bytes inside its data,
delete, replace with B's file or the other seed's), it restores a clean copy, injects the fault and
runs what the next stages run on it: training-data loading for the data artifacts (descriptions and
sections go through the sections and embed stages first), `predict.load_trained_model`, `tables` and
`run_results.load_run_result` for run outputs. A fault counts as detected when that raises an error whose
message names the damaged file. Prints one line per fault and `faults detected N/N`; exit 1 when
any fault went unnoticed.

    python bench/fault_injection.py [--workdir DIR]
"""

from __future__ import annotations

import argparse
import gzip
import logging
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SOURCE = "jarvis_dft_3d_2021"
TARGET = "formation_energy_peratom"
FAULTS = ("truncate", "flip", "delete", "swap")


def _ingest(work: Path, lines: list[str]) -> Path:
    from crys_pipeline import download, ingest
    from crys_pipeline.download import OFFLINE_FILES

    (work / "snap").mkdir(parents=True)
    with gzip.open(work / "snap" / OFFLINE_FILES["jarvis"], "wt") as handle:
        handle.writelines(lines)
    download.fetch(SOURCE, provider="jarvis", jarvis_key="dft_3d_2021", snapshot_dir=work / "snap",
                   download_dir=work / "dl", out=work / "manifest.json")
    targets = {TARGET: {"field": TARGET, "unit": "eV/atom", "transform": "none", "split": "random123"}}
    ingest.ingest(work / "manifest.json", targets=targets, subset=None, stratify_target=TARGET,
                  out=work / "structures.parquet", rejected_out=work / "rejected.parquet")
    return work / "structures.parquet"


def build(work: Path, lines: list[str], encoder) -> dict[str, Path]:
    """Every data artifact of one small pipeline, made by the stage functions the rules call."""
    from crys_pipeline import describe, embed, graphs, sections, splits
    from crys_pipeline.settings import DescribeSettings, GraphSettings, SplitSettings

    structures = _ingest(work, lines)
    splits.make_splits(structures, target=TARGET, method="random123", out_full=work / "full.json",
                       settings=SplitSettings(train_ratio=0.5, val_ratio=0.25, test_ratio=0.25),
                       out_low20=work / "low20.json")
    settings = DescribeSettings()
    describe.describe_shard(structures, shard="1-of-1", settings=settings, workers=1,
                            out=work / "shard.parquet")
    describe.merge_shards(structures, shards=[work / "shard.parquet"], out=work / "descriptions.parquet")
    sections.build_sections(work / "descriptions.parquet", global_header=False, out=work / "sections.parquet",
                            structures=structures)
    embed.embed_sections(work / "sections.parquet", out=work / "embeddings.h5", settings=encoder.settings,
                         encoder=encoder, structures=structures)
    graphs.build_graphs(structures, params=GraphSettings(shard_size=4), workers=1, out_dir=work / "graphs")
    return {"structures": structures, "splits": work / "full.json", "descriptions": work / "descriptions.parquet",
            "sections": work / "sections.parquet", "embeddings": work / "embeddings.h5",
            "graph shard": work / "graphs" / "shard-00000.parquet"}


def train_runs(art: dict[str, Path], work: Path) -> list[Path]:
    """Two seeds of a 1-epoch, 16-wide CrysMMNet on pipeline A."""
    from crys_pipeline import train
    from crys_pipeline.run_id import RunId
    from crys_pipeline.settings import ModelSettings

    runs = []
    for seed in (0, 1):
        out = RunId(SOURCE, TARGET, "crysmmnet", "full", seed).folder(work / "results")
        cfg = train.TrainConfig(target=TARGET, variant="crysmmnet", seed=seed, epochs=1, batch_size=4, device="cpu",
                                threads=1, model=ModelSettings(hidden_features=16, alignn_layers=1, gcn_layers=1))
        train.train(art["structures"], split=art["splits"], graphs=art["graph shard"].parent,
                    embeddings=art["embeddings"], out_dir=out, cfg=cfg)
        runs.append(out)
    return runs


def load_data(art: dict[str, Path]) -> None:
    """What a training job reads: structures, split, graph shards and embeddings, joined and checked."""
    from crys_pipeline.train.data import load_training_data

    load_training_data(art["structures"], split=art["splits"], target=TARGET,
                       graphs=art["graph shard"].parent, embeddings=art["embeddings"], text_view="full")


def consumers(art: dict[str, Path], run: Path, encoder, scratch: Path) -> dict[str, Callable[[], None]]:
    """Per artifact kind, what the next stages run on it."""
    from crys_pipeline import embed, predict, run_results, sections, tables

    def via_sections() -> None:
        sections.build_sections(art["descriptions"], global_header=False, out=scratch / "sections.parquet",
                                structures=art["structures"])
        via_embed(scratch / "sections.parquet")

    def via_embed(sections_path: Path) -> None:
        (scratch / "e.h5").unlink(missing_ok=True)
        embed.embed_sections(sections_path, out=scratch / "e.h5", settings=encoder.settings, encoder=encoder,
                             structures=art["structures"])
        load_data({**art, "embeddings": scratch / "e.h5"})

    spec = {"source": SOURCE, "targets": [TARGET], "variants": ["crysmmnet"], "regime": "full"}
    return {
        "structures": lambda: load_data(art), "splits": lambda: load_data(art),
        "descriptions": via_sections, "sections": lambda: via_embed(art["sections"]),
        "embeddings": lambda: load_data(art), "graph shard": lambda: load_data(art),
        "summary.json": lambda: tables.assemble_table("table1", spec=spec, units={TARGET: "eV/atom"},
                                                      runs=[run / "summary.json"]),
        "model.json": lambda: predict.load_trained_model(run), "model.pt": lambda: predict.load_trained_model(run),
        "metrics.jsonl": lambda: run_results.load_run_result(run / "summary.json"),
        "predictions.parquet": lambda: run_results.load_run_result(run / "summary.json"),
    }


def flip_inside(path: Path) -> None:
    """Invert 16 bytes inside the data: the largest Parquet column chunk, the HDF5 `full` matrix, else mid-file."""
    data = bytearray(path.read_bytes())
    offset = len(data) // 2
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        group = pq.ParquetFile(path).metadata.row_group(0)
        chunk = max((group.column(i) for i in range(group.num_columns)), key=lambda c: c.total_compressed_size)
        start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
        offset = start + chunk.total_compressed_size // 2
    elif path.suffix == ".h5":
        import h5py

        with h5py.File(path, "r") as handle:
            offset = handle["full"].id.get_offset() + 64
    data[offset : offset + 16] = bytes(b ^ 0xFF for b in data[offset : offset + 16])
    path.write_bytes(bytes(data))


def inject(fault: str, path: Path, other: Path) -> None:
    """Apply one fault to `path` (`other`: a valid file of the same kind from another build or run)."""
    if fault == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif fault == "flip":
        flip_inside(path)
    elif fault == "delete":
        path.unlink()
    else:
        shutil.copyfile(other, path)


def detected(check: Callable[[], None], path: Path) -> tuple[bool, str]:
    """(raised an error naming `path`, the message's first line)."""
    try:
        check()
    except Exception as exc:  # any error counts, as long as it names the file
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return str(path) in str(exc) or path.name in str(exc), message
    return False, "no error: the damaged file was used"


def run_pass(work: Path) -> tuple[int, int]:
    """Build, inject every fault, print one line each and the total; returns (detected, total)."""
    from crys_pipeline import embed
    from crys_pipeline.settings import EmbedSettings

    lines = [line for line in (DATA / "jarvis_dft3d_2021_tiny.jsonl").read_text().splitlines(keepends=True)
             if line.strip()]
    encoder = embed.TextEncoder(EmbedSettings(max_length=64, token_budget=2048, device="cpu"))
    art_a = build(work / "A", lines[:8], encoder)
    art_b = build(work / "B", lines[8:16], encoder)
    runs = train_runs(art_a, work / "A")
    files = {**art_a, **{name: runs[0] / name for name in
                         ("summary.json", "model.json", "model.pt", "metrics.jsonl", "predictions.parquet")}}
    others = {**art_b, **{name: runs[1] / name for name in files if name not in art_b}}
    checks = consumers(art_a, runs[0], encoder, work / "scratch")
    (work / "scratch").mkdir()
    n_ok = total = 0
    for kind, path in files.items():
        clean = path.read_bytes()
        for fault in FAULTS:
            inject(fault, path, others[kind])
            ok, message = detected(checks[kind], path)
            path.write_bytes(clean)
            n_ok, total = n_ok + ok, total + 1
            print(f"{'detected' if ok else 'MISSED  '}  {kind:20s} {fault:8s} {message[:150]}")
    print(f"faults detected {n_ok}/{total}")
    return n_ok, total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="kept when given (default: a temporary folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.workdir:
        n_ok, total = run_pass(args.workdir)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            n_ok, total = run_pass(Path(tmp))
    return 0 if n_ok == total else 1


if __name__ == "__main__":
    sys.exit(main())
