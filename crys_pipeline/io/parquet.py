"""Parquet artifacts: layout-checked, stamped, atomically written with page checksums, verified on read.

Writers stamp every file with its kind, SCHEMA_VERSION, the package version and the parameters that
produced it, and store a CRC32 per data page; readers validate the layout declared in `schemas.py`,
the expected parameters and every page checksum, and turn any unreadable file (truncated, garbage,
flipped bytes) into one ArtifactError naming the path and the fix. Graph shard folders: `graph_shards`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from crys_pipeline.io.core import ArtifactError, corrupt, stamp, write_atomic
from crys_pipeline.schemas import META_KEY, PARQUET, SCHEMA_VERSION, ParquetLayout, split_column


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
    table: pa.Table, path: str | Path, *, kind: str, params: dict[str, Any],
    extra: dict[str, Any] | None = None,
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
    meta = stamp(kind, params, extra)
    for fld in layout.schema:
        if fld.name in table.column_names:
            idx = table.column_names.index(fld.name)
            table = table.set_column(idx, fld, table.column(fld.name).cast(fld.type))
    _check_columns(table.schema, layout, meta, str(path))
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True)})
    write_atomic(path, lambda tmp: pq.write_table(table, tmp, compression="zstd", write_page_checksum=True))


def read_meta(path: str | Path) -> dict[str, Any]:
    """The crys_pipeline metadata of a Parquet artifact (empty dict for a foreign file).

    Raises:
        ArtifactError: the file is not readable Parquet (truncated, garbage); the message names it.
    """
    try:
        raw = pq.read_schema(path).metadata or {}
        blob = raw.get(META_KEY.encode())
        return json.loads(blob) if blob else {}
    except (pa.ArrowException, OSError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise corrupt(path, exc) from exc


def check_meta(meta: dict[str, Any], *, kind: str, where: str, expect: dict[str, Any] | None = None) -> None:
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
    """Read a Parquet artifact, checking kind, version, required columns, expected params and page checksums.

    Raises:
        ArtifactError: missing, corrupt (a page checksum mismatch, truncated, garbage), of another kind or
            version, or made with other params; the message names the path and the fix.
    """
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: no such artifact")
    meta = read_meta(path)
    check_meta(meta, kind=kind, where=str(path), expect=expect)
    try:
        _check_columns(pq.read_schema(path), PARQUET[kind], meta, str(path))
        return pq.read_table(path, columns=columns, page_checksum_verification=True)
    except (pa.ArrowException, OSError) as exc:
        raise corrupt(path, exc) from exc



def parquet_head(path: str | Path, rows: int) -> tuple[pa.Schema, int, dict[str, Any], pa.Table]:
    """(schema, row count, crys_pipeline metadata, first `rows` rows) of any Parquet file, without a full read."""
    try:
        pfile = pq.ParquetFile(path, page_checksum_verification=True)
        head = next(pfile.iter_batches(batch_size=max(rows, 1)), None)
    except (pa.ArrowException, OSError) as exc:
        raise corrupt(path, exc) from exc
    table = pa.Table.from_batches([head]) if head is not None else pfile.schema_arrow.empty_table()
    return pfile.schema_arrow, pfile.metadata.num_rows, read_meta(path), table.slice(0, rows)
