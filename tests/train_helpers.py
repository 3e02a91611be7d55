"""Helpers of the data / train tests: real structures tables, split files and graph shards.

Graph shards are built through the `crys-pipeline graphs` command line with the arguments of
workflow/rules/graphs.smk and the default config's graph settings, so the tests train on exactly
what the pipeline produces.
"""

from __future__ import annotations

import contextlib
import gzip
from pathlib import Path

import pytest
from conftest import SHARED_DATA, default_config

from crys_pipeline import io
from crys_pipeline.splits import split_hash

SOURCE = "jarvis_dft_3d_2021"


def ingest_first(n: int, workdir: Path) -> Path:
    """Structures table of the first `n` records of the real JARVIS dft_3d_2021 snapshot."""
    from crys_pipeline import download, ingest
    from crys_pipeline.download import OFFLINE_FILES

    snap = workdir / "snapshot"
    snap.mkdir(parents=True, exist_ok=True)
    with gzip.open(SHARED_DATA / OFFLINE_FILES["jarvis"], "rt") as src:
        lines = [next(src) for _ in range(n)]
    with gzip.open(snap / OFFLINE_FILES["jarvis"], "wt") as dst:
        dst.writelines(lines)
    cfg = default_config()["sources"][SOURCE]
    manifest = workdir / f"{SOURCE}.json"
    download.fetch(SOURCE, provider="jarvis", jarvis_key=cfg["jarvis_key"], snapshot_dir=snap,
                   download_dir=workdir / "dl", out=manifest)
    out = workdir / f"{SOURCE}.parquet"
    ingest.ingest(manifest, targets=cfg["targets"], subset=None, stratify_target=cfg["stratify_target"],
                  out=out, rejected_out=workdir / f"{SOURCE}.rejected.parquet")
    return out


def build_graph_dir(structures: Path, out_dir: Path, shard_size: int = 16) -> Path:
    """Graph shards of a structures table via `crys-pipeline graphs` (default graph settings)."""
    from crys_pipeline.cli import main
    from crys_pipeline.settings import GraphSettings, cli_args

    flags = cli_args(GraphSettings, {**default_config()["graphs"], "shard_size": shard_size}).split()
    argv = ["graphs", "--structures", str(structures), *flags, "--workers", "1", "--out-dir", str(out_dir)]
    if main(argv) != 0:
        raise RuntimeError(f"crys-pipeline {' '.join(argv)} failed")
    return out_dir


def structure_ids(structures: Path, target: str) -> list[str]:
    """Ids with a non-null `target`, in table order."""
    table = io.read_parquet(structures, "structures", columns=["material_id", target])
    return [m for m, v in zip(table.column("material_id").to_pylist(), table.column(target).to_pylist(), strict=True)
            if v is not None]


def write_split(path: Path, target: str, train: list[str], val: list[str], test: list[str]) -> Path:
    """A split file in the layout `crys_pipeline.splits` writes (hash included)."""
    split = {"id_train": list(train), "id_val": list(val), "id_test": list(test)}
    io.write_json({**split, "target": target, "method": "explicit", "seed": 0, "regime": "full",
                   "n_total": sum(map(len, split.values())), "n_train": len(train), "n_val": len(val),
                   "n_test": len(test), "hash": split_hash(split)}, path)
    return path


def mp_text_dataset(workdir: Path, n_failed: int = 1) -> dict[str, Path]:
    """Structures, graph shards and embeddings of the real MP crystals that carry a published robocrys text.

    The records of robocrys_text_reference_mp.jsonl with a structure and a formation energy become a
    structures table (target `e_form`, eV/atom); their descriptions become the `full` text (global =
    first two sentences, local = the rest), and the last `n_failed` materials get a failed text row,
    as a describe timeout leaves it. Embeddings: the offline encoder at max_length 128 on the CPU.
    """
    import json

    import pyarrow as pa

    from crys_pipeline import embed
    from crys_pipeline.settings import EmbedSettings

    recs = [json.loads(line) for line in (SHARED_DATA / "robocrys_text_reference_mp.jsonl").read_text().splitlines()]
    recs = [r for r in recs if r.get("lattice_mat") and r.get("formation_energy_per_atom") is not None]
    structures = workdir / "mp_text.parquet"
    table = pa.Table.from_pylist([
        {"material_id": r["material_id"], "formula": r["formula"], "natoms": len(r["species"]),
         "lattice": r["lattice_mat"], "species": r["species"], "frac_coords": r["frac_coords"],
         "e_form": float(r["formation_energy_per_atom"]), "split_e_form": None} for r in recs])
    table = table.set_column(table.column_names.index("split_e_form"), "split_e_form",
                             pa.array([None] * len(recs), type=pa.string()))
    io.write_parquet(table, structures, kind="structures", params={},
                     extra={"source": "mp_text", "targets": ["e_form"], "snapshot_sha256": ""})
    rows = []
    for i, r in enumerate(recs):
        parts = r["description"].split(". ")
        ok = i < len(recs) - n_failed
        rows.append({"material_id": r["material_id"], "status": "ok" if ok else "timeout",
                     "error": "" if ok else "robocrys: timed out after 120 s",
                     "full": r["description"] if ok else "", "global": ". ".join(parts[:2]) + "." if ok else "",
                     "local": ". ".join(parts[2:]) if ok else ""})
    sections = workdir / "sections.parquet"
    io.write_parquet(pa.Table.from_pylist(rows), sections, kind="sections", params={},
                     extra={"source": "mp_text", "versions": {}, "counts": {}})
    embeddings = workdir / "embeddings.h5"
    embed.embed_sections(sections, out=embeddings,
                         settings=EmbedSettings(max_length=128, token_budget=4096, device="cpu"))
    return {"structures": structures, "graphs": build_graph_dir(structures, workdir / "graphs"),
            "embeddings": embeddings, "ids": [r["material_id"] for r in recs]}


class Killed(Exception):
    """Stands in for the job being killed right after a checkpoint."""


@contextlib.contextmanager
def killed_after_checkpoint(monkeypatch: pytest.MonkeyPatch, epoch: int | None = None):
    """Training run inside the block dies (`Killed`, which the block expects) right after it saves the checkpoint
    of `epoch` (None: the first one); the real `save_checkpoint` is back after the block."""
    from crys_pipeline import train

    save = train.save_checkpoint

    def save_then_die(path, state, *args, **kw):
        save(path, state, *args, **kw)
        if epoch is None or state.epoch == epoch:
            raise Killed

    monkeypatch.setattr(train, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        yield
    monkeypatch.setattr(train, "save_checkpoint", save)
