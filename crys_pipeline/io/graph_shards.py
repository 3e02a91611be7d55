"""The ``graphs`` layout (schemas.GRAPHS) end to end: its row codec and its shard-folder reader.

A graph stage output folder holds ``shard-NNNNN.parquet`` files in the ``graphs`` layout plus a
``manifest.json`` listing every shard with its sha256. `encode_graphs` turns the builder's per-crystal
rows into one shard's Arrow table, `decode_graphs` turns a table back into per-material numpy arrays,
and `read_graph_dir` reads and verifies a whole folder. The graph construction itself is
`crys_pipeline.graphs`; training data (`crys_pipeline.train.data`) decodes the tables it reads here.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from crys_pipeline.io.core import REBUILD, ArtifactError, corrupt, read_json, sha256_file
from crys_pipeline.io.parquet import check_meta, read_meta, read_parquet
from crys_pipeline.schemas import STATUS_OK

#: Per material: (z int64 [N], edge_index int64 [2, E], edge_vec float32 [E, 3]).
GraphArrays = tuple[np.ndarray, np.ndarray, np.ndarray]


def _offsets(lengths: Iterable[int]) -> pa.Array:
    return pa.array(np.concatenate(([0], np.cumsum(list(lengths), dtype=np.int64))).astype(np.int32))


def _concat(parts: list[np.ndarray], dtype: np.dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)


def encode_graphs(rows: list[dict[str, Any]]) -> pa.Table:
    """Arrow table of graph rows in the ``graphs`` layout (built from flat arrays, no per-edge Python).

    Args:
        rows: one dict per crystal with material_id, status, error, natoms, nedges, cutoff and the arrays
            z int8 [N], edge_index int [2, E] (edge e = column e: source row 0, target row 1) and
            edge_vec float32 [E, 3] (empty for a failed row).
    """
    index_parts = [part for row in rows for part in row["edge_index"]]  # src0, dst0, src1, dst1, ...
    index_lists = pa.ListArray.from_arrays(_offsets(len(p) for p in index_parts),
                                           pa.array(_concat(index_parts, np.int32)))
    vec_flat = _concat([row["edge_vec"].reshape(-1) for row in rows], np.float32)  # [3 * sum E]
    vec_lists = pa.ListArray.from_arrays(_offsets(row["nedges"] for row in rows),
                                         pa.FixedSizeListArray.from_arrays(pa.array(vec_flat), 3))
    z_lists = pa.ListArray.from_arrays(_offsets(len(row["z"]) for row in rows),
                                       pa.array(_concat([row["z"] for row in rows], np.int8)))
    return pa.table({
        "material_id": pa.array([row["material_id"] for row in rows], pa.string()),
        "status": pa.array([row["status"] for row in rows], pa.string()),
        "error": pa.array([row["error"] for row in rows], pa.string()),
        "natoms": pa.array([row["natoms"] for row in rows], pa.int32()),
        "nedges": pa.array([row["nedges"] for row in rows], pa.int32()),
        "cutoff": pa.array([row["cutoff"] for row in rows], pa.float64()),
        "z": z_lists,
        "edge_index": pa.FixedSizeListArray.from_arrays(index_lists, 2),
        "edge_vec": vec_lists,
    })


def _flat_values(column: pa.ChunkedArray, depth: int) -> np.ndarray:
    """The innermost values of a nested list column, as one numpy array."""
    array = column.combine_chunks()
    for _ in range(depth):
        array = array.flatten()
    return array.to_numpy(zero_copy_only=False)


def decode_graphs(table: pa.Table) -> dict[str, GraphArrays]:
    """Per-material arrays of the ok rows of a graphs table (`encode_graphs` inverted, z widened to int64).

    Returns:
        material_id -> (z int64 [N], edge_index int64 [2, E], edge_vec float32 [E, 3]).
    """
    ok = table.filter(pc.equal(table.column("status"), STATUS_OK))
    natoms = ok.column("natoms").to_numpy().astype(np.int64)
    nedges = ok.column("nedges").to_numpy().astype(np.int64)
    zs = np.split(_flat_values(ok.column("z"), 1).astype(np.int64), np.cumsum(natoms)[:-1])
    index_all = _flat_values(ok.column("edge_index"), 2).astype(np.int64)
    index_rows = np.split(index_all, np.cumsum(np.repeat(nedges, 2))[:-1])  # src0, dst0, src1, dst1, ...
    vecs = np.split(_flat_values(ok.column("edge_vec"), 2).reshape(-1, 3), np.cumsum(nedges)[:-1])
    return {
        mid: (zs[n], np.stack(index_rows[2 * n:2 * n + 2]), vecs[n])
        for n, mid in enumerate(ok.column("material_id").to_pylist())
    }


def _check_graph_manifest(path: Path, shards: list[Path]) -> None:
    """The folder's manifest.json must list exactly `shards`, each with the sha256 of its bytes."""
    manifest = path / "manifest.json"
    if not manifest.is_file():
        raise corrupt(path, "no manifest.json: an incomplete or foreign graphs folder")
    listed = {s["file"]: s.get("sha256") for s in read_json(manifest)["shards"]}
    missing = sorted(set(listed) - {s.name for s in shards})
    extra = sorted({s.name for s in shards} - set(listed))
    if missing or extra:
        raise corrupt(path, f"shards missing {missing} / not in manifest.json {extra}")
    for shard in shards:
        if sha256_file(shard) != listed[shard.name]:
            raise corrupt(shard, "sha256 differs from the one recorded in manifest.json: the shard changed after "
                          "it was written")


def rebuild_folder(path: str | Path) -> str:
    """The fix for any problem inside a graph folder: snakemake rebuilds the folder, never a single shard."""
    return (f"delete the folder {path} (the graphs stage's output: snakemake rebuilds a deleted folder, not a "
            "deleted shard) and rerun the same command")


def read_graph_dir(path: str | Path, expect: dict[str, Any] | None = None) -> pa.Table:
    """All graph shards of a `graphs` output folder, concatenated in shard order.

    The folder's manifest.json must list exactly its shards with the sha256 of each (a changed, swapped,
    missing or extra shard is refused); every shard is validated against the ``graphs`` layout and its
    page checksums; all shards must carry the same params (and `expect`, when given), and the shard
    indices must be exactly 0..n_shards-1. A cache made with other graph parameters, a mix of two
    builds or a damaged file raises ArtifactError naming the file and, as the fix, the whole folder
    (`rebuild_folder`): the folder is the stage's output, so deleting one shard would not rebuild it.

    Args:
        path: folder holding shard-NNNNN.parquet files (``results/graphs/{source}``) and manifest.json.
        expect: params the shards must have been built with (e.g. ``graphs.graph_meta(settings)``).
    """
    path = Path(path)
    try:
        return _read_shards(path, expect)
    except ArtifactError as exc:
        raise ArtifactError(f"{str(exc).removesuffix(f'; {REBUILD}')}; {rebuild_folder(path)}") from exc


def _read_shards(path: Path, expect: dict[str, Any] | None) -> pa.Table:
    shards = sorted(path.glob("shard-*.parquet"))
    if not shards:
        raise ArtifactError(f"{path}: no graph shards")
    _check_graph_manifest(path, shards)
    metas = [read_meta(shard) for shard in shards]
    for shard, meta in zip(shards, metas, strict=True):
        check_meta(meta, kind="graphs", where=str(shard), expect=expect)
        if meta["params"] != metas[0]["params"] or meta.get("structures_sha256") != metas[0].get("structures_sha256"):
            raise ArtifactError(f"{shard}: made with other params or inputs than {shards[0].name}")
    if sorted(meta.get("shard") for meta in metas) != list(range(metas[0].get("n_shards", -1))):
        raise ArtifactError(f"{path}: shards {[m.get('shard') for m in metas]} do not form one complete build")
    return pa.concat_tables([read_parquet(shard, "graphs") for shard in shards])
