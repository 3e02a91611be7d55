"""The only module that opens Parquet, HDF5 and JSON artifacts.

Writers stamp every file with its kind, SCHEMA_VERSION, the package version and the parameters
that produced it, and write atomically (temporary file, then rename), so a killed job never leaves
a half-written artifact under its final name. Readers validate the layout declared in
`schemas.py` and, when asked, that the file was made with the expected parameters, so a stale
cache can never be read with other settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from crys_pipeline import __version__
from crys_pipeline.schemas import META_KEY, PARQUET, SCHEMA_VERSION, ParquetLayout, split_column


class ArtifactError(ValueError):
    """An artifact is missing, of the wrong kind or version, or was made with other parameters."""


def _stamp(kind: str, params: dict[str, Any], extra: dict[str, Any] | None) -> dict[str, Any]:
    meta = {
        "kind": kind,
        "schema_version": SCHEMA_VERSION,
        "package_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "params": params,
    }
    meta.update(extra or {})
    return meta


def _atomic_target(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _check_columns(schema: pa.Schema, layout: ParquetLayout, meta: dict[str, Any], where: str) -> None:
    for fld in layout.schema:
        if fld.name not in schema.names:
            raise ArtifactError(f"{where}: missing column {fld.name!r} required by layout {layout.kind!r}")
        got = schema.field(fld.name).type
        if not got.equals(fld.type):
            raise ArtifactError(f"{where}: column {fld.name!r} has type {got}, layout {layout.kind!r} needs {fld.type}")
    for key in layout.required_meta:
        if key not in meta:
            raise ArtifactError(f"{where}: metadata key {key!r} missing for layout {layout.kind!r}")
    if layout.dynamic_targets:
        for target in meta.get("targets", []):
            for name, typ in ((target, pa.float64()), (split_column(target), pa.string())):
                if name not in schema.names or not schema.field(name).type.equals(typ):
                    raise ArtifactError(f"{where}: target column {name!r} missing or not {typ}")


def write_parquet(
    table: pa.Table, path: str | Path, kind: str, params: dict[str, Any], extra: dict[str, Any] | None = None
) -> None:
    """Validate `table` against layout `kind`, stamp metadata and write it atomically to `path`.

    Args:
        table: the rows; required columns are cast to the layout's types.
        path: destination file.
        kind: a key of `schemas.PARQUET`.
        params: the parameters that produced the artifact (checked by `read_parquet(expect=...)`).
        extra: further metadata (versions of third-party tools, counts, targets...).
    """
    layout = PARQUET[kind]
    path = Path(path)
    meta = _stamp(kind, params, extra)
    for fld in layout.schema:
        if fld.name in table.column_names:
            idx = table.column_names.index(fld.name)
            table = table.set_column(idx, fld, table.column(fld.name).cast(fld.type))
    _check_columns(table.schema, layout, meta, str(path))
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True)})
    tmp = _atomic_target(path)
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_meta(path: str | Path) -> dict[str, Any]:
    """The crys_pipeline metadata of a Parquet artifact (empty dict for a foreign file)."""
    raw = pq.read_schema(path).metadata or {}
    blob = raw.get(META_KEY.encode())
    return json.loads(blob) if blob else {}


def check_meta(meta: dict[str, Any], kind: str, where: str, expect: dict[str, Any] | None = None) -> None:
    """Raise ArtifactError unless `meta` is of `kind`, of this SCHEMA_VERSION and made with `expect` params."""
    if meta.get("kind") != kind:
        raise ArtifactError(f"{where}: expected a {kind!r} artifact, found {meta.get('kind')!r}")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise ArtifactError(
            f"{where}: schema version {meta.get('schema_version')!r} != {SCHEMA_VERSION!r}; rerun the stage"
        )
    params = meta.get("params", {})
    for key, value in (expect or {}).items():
        if params.get(key) != value:
            raise ArtifactError(
                f"{where}: made with {key}={params.get(key)!r} but {value!r} was expected; "
                "the cache is stale, rerun the stage"
            )


def read_parquet(
    path: str | Path, kind: str, expect: dict[str, Any] | None = None, columns: list[str] | None = None
) -> pa.Table:
    """Read a Parquet artifact, checking kind, version, required columns and expected params."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: no such artifact")
    meta = read_meta(path)
    check_meta(meta, kind, str(path), expect)
    _check_columns(pq.read_schema(path), PARQUET[kind], meta, str(path))
    return pq.read_table(path, columns=columns)


def write_json(obj: Any, path: str | Path) -> None:
    """Write JSON atomically (sorted keys, indented)."""
    path = Path(path)
    tmp = _atomic_target(path)
    try:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_json(path: str | Path) -> Any:
    """Read a JSON artifact."""
    return json.loads(Path(path).read_text())


def write_text(text: str, path: str | Path) -> None:
    """Write a text artifact (CSV, Markdown) atomically."""
    path = Path(path)
    tmp = _atomic_target(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_jsonl(path: str | Path) -> list[Any]:
    """Read a JSON-lines artifact (one JSON value per non-empty line)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def write_torch(obj: Any, path: str | Path) -> None:
    """torch.save `obj` (state dicts, checkpoints) atomically, so a kill never leaves half a file."""
    import torch

    path = Path(path)
    tmp = _atomic_target(path)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_torch(path: str | Path) -> Any:
    """Load a file written by `write_torch` onto the CPU (our own checkpoints: tensors, numbers, RNG states)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def parquet_head(path: str | Path, rows: int) -> tuple[pa.Schema, int, dict[str, Any], pa.Table]:
    """(schema, row count, crys_pipeline metadata, first `rows` rows) of any Parquet file, without a full read."""
    pfile = pq.ParquetFile(path)
    head = next(pfile.iter_batches(batch_size=max(rows, 1)), None)
    table = pa.Table.from_batches([head]) if head is not None else pfile.schema_arrow.empty_table()
    return pfile.schema_arrow, pfile.metadata.num_rows, read_meta(path), table.slice(0, rows)


def h5_summary(path: str | Path, rows: int) -> tuple[dict[str, Any], list[tuple[str, tuple, str, Any]]]:
    """(root attributes, [(dataset, shape, dtype, first rows)]) of an HDF5 file."""
    import h5py

    items: list[tuple[str, tuple, str, Any]] = []
    with h5py.File(path, "r") as handle:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in handle.attrs.items()}

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                items.append((name, obj.shape, str(obj.dtype), obj[: min(rows, obj.shape[0])] if obj.shape else obj[()]))

        handle.visititems(visit)
    return attrs, items


def read_graph_dir(path: str | Path, expect: dict[str, Any] | None = None) -> pa.Table:
    """All graph shards of a `graphs` output folder, concatenated in shard order.

    Every shard is validated against the ``graphs`` layout; all shards must carry the same params
    (and `expect`, when given), the shard indices must be exactly 0..n_shards-1, and when the
    folder has a manifest.json it must list exactly these shards. A cache made with other graph
    parameters, or a mix of two builds, raises ArtifactError.

    Args:
        path: folder holding shard-NNNNN.parquet files (``results/graphs/{source}``).
        expect: params the shards must have been built with (e.g. ``GraphParams.as_meta()``).
    """
    path = Path(path)
    shards = sorted(path.glob("shard-*.parquet"))
    if not shards:
        raise ArtifactError(f"{path}: no graph shards")
    metas = [read_meta(shard) for shard in shards]
    for shard, meta in zip(shards, metas):
        check_meta(meta, "graphs", str(shard), expect)
        if meta["params"] != metas[0]["params"] or meta.get("structures_sha256") != metas[0].get("structures_sha256"):
            raise ArtifactError(f"{shard}: made with other params or inputs than {shards[0].name}; rebuild {path}")
    if sorted(meta.get("shard") for meta in metas) != list(range(metas[0].get("n_shards", -1))):
        raise ArtifactError(f"{path}: shards {[m.get('shard') for m in metas]} do not form one complete build")
    manifest = path / "manifest.json"
    if manifest.exists() and [s["file"] for s in read_json(manifest)["shards"]] != [s.name for s in shards]:
        raise ArtifactError(f"{manifest}: lists other shards than the folder holds; rebuild {path}")
    return pa.concat_tables([read_parquet(shard, "graphs") for shard in shards])
