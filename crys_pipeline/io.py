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


# --- HDF5 embeddings (schemas.EMBEDDINGS) ---------------------------------------------------------
_PROGRESS = "_progress"


def _h5_attr(value: Any) -> Any:
    """An HDF5-storable attribute: dicts/lists/None as JSON text, scalars as they are."""
    if value is None or isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    return value


def _h5_attrs_dict(attrs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        value = value.decode() if isinstance(value, bytes) else value
        if isinstance(value, str) and value[:1] in "{[n":
            try:
                value = json.loads(value)
            except ValueError:
                pass
        out[key] = value.item() if hasattr(value, "item") else value
    return out


class EmbeddingsPartial:
    """An embeddings file under construction at `<out>.partial`, resumable row by row.

    Every dataset of `schemas.EMBEDDINGS` is allocated up front; `_progress/{variant}` marks the rows
    written so far and is flushed with them, so a killed job keeps every finished chunk. `finalize`
    checks that every row is written, drops the bookkeeping and renames the file to its final name.
    """

    def __init__(self, handle: Any, final: Path) -> None:
        self._h5 = handle
        self.final = final

    def done(self, variant: str) -> Any:
        """bool [N]: rows of `variant` already written."""
        return self._h5[f"{_PROGRESS}/{variant}"][()]

    def write_rows(self, variant: str, rows: Any, values: dict[str, Any]) -> None:
        """Write rows `rows` (strictly increasing int indices) of `variant` and mark them done.

        Args:
            variant: text variant name.
            rows: int [k] row indices, strictly increasing.
            values: suffix -> array with k leading rows, for every suffix of the layout
                ("" embedding [k, D], "_token_count", "_truncated", "_empty").
        """
        from crys_pipeline.schemas import EMBEDDINGS

        for suffix in EMBEDDINGS.variant_datasets:
            self._h5[f"{variant}{suffix}"][rows] = values[suffix]
        self._h5[f"{_PROGRESS}/{variant}"][rows] = True
        self._h5.flush()

    def close_if_open(self) -> None:
        """Close the partial file unless `finalize` already did (it stays on disk for a later resume)."""
        if self._h5.id.valid:
            self._h5.close()

    def finalize(self, attrs: dict[str, Any]) -> None:
        """Check completeness, add `attrs`, drop the bookkeeping, close and rename to the final path."""
        from crys_pipeline.schemas import EMBEDDINGS

        missing = {v: int((~self.done(v)).sum()) for v in EMBEDDINGS.variants if not self.done(v).all()}
        if missing:
            raise RuntimeError(f"{self.final}: rows still missing per variant {missing}")
        for key, value in attrs.items():
            self._h5.attrs[key] = _h5_attr(value)
        del self._h5[_PROGRESS]
        partial = Path(self._h5.filename)
        self._h5.close()
        os.replace(partial, self.final)


def partial_path(path: str | Path) -> Path:
    """Where the resumable partial file of the embeddings artifact `path` lives."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


def _partial_matches(handle: Any, meta: dict[str, Any], ids: list[str], dim: int) -> bool:
    old = json.loads(handle.attrs.get(META_KEY, "{}"))
    return (
        old.get("params") == meta["params"] and old.get("inputs") == meta.get("inputs")
        and _PROGRESS in handle and handle["material_id"].shape == (len(ids),)
        and list(handle["material_id"].asstr()[()]) == ids and handle["full"].shape[1] == dim
    )


def open_embeddings_partial(
    path: str | Path, rows: dict[str, list[str]], dim: int, params: dict[str, Any], inputs: dict[str, Any]
) -> EmbeddingsPartial:
    """Open (resume) or create the partial file of embeddings artifact `path`.

    A partial file made with the same params, inputs, ids and width is resumed; any other is replaced.

    Args:
        path: final artifact path (`results/embeddings/{source}.h5`); the partial file sits beside it.
        rows: the per-row string datasets (`material_id`, `status`, `error`), each [N].
        dim: embedding width D.
        params: the parameters that make the embeddings (checked by `read_embeddings(expect=...)`).
        inputs: input identity (e.g. the sections file's sha256); a change restarts from scratch.
    """
    import h5py
    import numpy as np

    from crys_pipeline.schemas import EMBEDDINGS

    final = Path(path)
    partial = partial_path(final)
    meta = _stamp(EMBEDDINGS.kind, params, {"inputs": inputs})
    ids = rows["material_id"]
    if partial.exists():
        handle = h5py.File(partial, "a")
        if _partial_matches(handle, meta, ids, dim):
            return EmbeddingsPartial(handle, final)
        handle.close()
        partial.unlink()
    final.parent.mkdir(parents=True, exist_ok=True)
    handle = h5py.File(partial, "w")
    n = len(ids)
    for name, values in rows.items():
        handle.create_dataset(name, data=np.array(values, dtype=object), dtype=h5py.string_dtype("utf-8"))
    for variant in EMBEDDINGS.variants:
        for suffix, (dtype, ndim) in EMBEDDINGS.variant_datasets.items():
            shape = (n, dim) if ndim == 2 else (n,)
            handle.create_dataset(f"{variant}{suffix}", shape=shape, dtype=dtype)
        handle.create_dataset(f"{_PROGRESS}/{variant}", shape=(n,), dtype=bool)
    handle.attrs[META_KEY] = json.dumps(meta, sort_keys=True)
    handle.flush()
    return EmbeddingsPartial(handle, final)


def _check_embeddings_layout(handle: Any, where: str) -> int:
    """Raise ArtifactError unless `handle` holds every dataset and attribute of the layout; returns N."""
    from crys_pipeline.schemas import EMBEDDINGS

    n = handle["material_id"].shape[0] if "material_id" in handle else -1
    dim = int(handle.attrs.get("dim", -1))
    for name, (dtype, ndim) in EMBEDDINGS.datasets().items():
        if name not in handle:
            raise ArtifactError(f"{where}: missing dataset {name!r} required by layout {EMBEDDINGS.kind!r}")
        dset = handle[name]
        want = (n, dim) if ndim == 2 else (n,)
        ok_type = dset.dtype.kind in "OS" if dtype == "str" else dset.dtype == np_dtype(dtype)
        if dset.shape != want or not ok_type:
            raise ArtifactError(f"{where}: dataset {name!r} is {dset.dtype}{dset.shape}, layout needs {dtype}{want}")
    for key in EMBEDDINGS.required_attrs:
        if key not in handle.attrs:
            raise ArtifactError(f"{where}: attribute {key!r} missing for layout {EMBEDDINGS.kind!r}")
    return n


def np_dtype(name: str) -> Any:
    """numpy dtype of a layout dtype name (`float32`, `int32`, `bool`)."""
    import numpy as np

    return np.dtype(name)


def _open_embeddings(path: str | Path, variant: str, expect: dict[str, Any] | None) -> Any:
    """Open an embeddings HDF5 read-only after checking kind, version, params and layout."""
    import h5py

    from crys_pipeline.schemas import EMBEDDINGS

    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: no such artifact")
    if variant not in EMBEDDINGS.variants:
        raise ValueError(f"unknown text variant {variant!r}; choose one of {EMBEDDINGS.variants}")
    handle = h5py.File(path, "r")
    try:
        check_meta(json.loads(handle.attrs.get(META_KEY, "{}")), EMBEDDINGS.kind, str(path), expect)
        _check_embeddings_layout(handle, str(path))
    except Exception:
        handle.close()
        raise
    return handle


def read_embeddings(
    path: str | Path, variant: str, expect: dict[str, Any] | None = None
) -> tuple[list[str], Any, dict[str, Any]]:
    """Read one text variant of an embeddings HDF5, checked against `schemas.EMBEDDINGS`.

    Args:
        path: `results/embeddings/{source}.h5`.
        variant: `full`, `global` or `local`.
        expect: params the file must have been made with (e.g. {"model": ..., "max_length": 512}).

    Returns:
        (ids [N], float32 matrix [N, D] with row i belonging to ids[i], attrs): attrs holds the file's
        attributes (model, revision, pooling, max_length, normalizer, dtype, dim, versions, per-variant
        `stats`), `params`, `inputs` (the sections file's sha256 and params, i.e. the robocrys and section
        settings of the texts), `variant` and `encoder` (model@revision). Per-row flags: `read_embedding_flags`.
    """
    import numpy as np

    with _open_embeddings(path, variant, expect) as handle:
        ids = list(handle["material_id"].asstr()[()])
        matrix = np.asarray(handle[variant][()], dtype=np.float32)
        attrs = {k: v for k, v in _h5_attrs_dict(handle.attrs).items() if k != META_KEY}
        meta = json.loads(handle.attrs[META_KEY])
        attrs["params"], attrs["inputs"] = meta["params"], meta.get("inputs", {})
    attrs["variant"] = variant
    attrs["encoder"] = attrs["model"] + (f"@{attrs['revision']}" if attrs.get("revision") else "")
    return ids, matrix, attrs


def read_embedding_flags(path: str | Path, variant: str) -> dict[str, Any]:
    """Per-row arrays of one variant: `material_id`, `status`, `error` (str [N]), `token_count` (int32 [N],
    untruncated, special tokens included), `truncated` and `empty` (bool [N])."""
    with _open_embeddings(path, variant, None) as handle:
        out = {name: list(handle[name].asstr()[()]) for name in ("material_id", "status", "error")}
        out.update({key: handle[f"{variant}_{key}"][()] for key in ("token_count", "truncated", "empty")})
    return out
