"""`crys-pipeline inspect`: a human-readable summary of any artifact (Parquet, HDF5, JSON)."""

from __future__ import annotations

import json
from pathlib import Path

from crys_pipeline import io

_META_SKIP = ("params",)


def _format_meta(meta: dict) -> list[str]:
    lines = [f"  {k}: {json.dumps(v)[:200]}" for k, v in sorted(meta.items()) if k not in _META_SKIP]
    if "params" in meta:
        lines.append(f"  params: {json.dumps(meta['params'], sort_keys=True)[:600]}")
    return lines


def _parquet(path: Path, rows: int) -> list[str]:
    schema, n, meta, head = io.parquet_head(path, rows)
    out = [f"{path}  (Parquet, {n} rows, {len(schema)} columns)", "schema:"]
    out += [f"  {f.name}: {f.type}" for f in schema]
    out += ["metadata:"] + (_format_meta(meta) or ["  (no crys_pipeline metadata)"])
    out.append(f"first {len(head)} rows:")
    for row in head.to_pylist():
        out.append("  " + json.dumps(row, default=str)[:400])
    return out


def _h5(path: Path, rows: int) -> list[str]:
    attrs, items = io.h5_summary(path, rows)
    meta = json.loads(attrs.pop(io.META_KEY)) if io.META_KEY in attrs else {}
    out = [f"{path}  (HDF5, {len(items)} datasets)", "datasets:"]
    out += [f"  {name}: shape {shape}, {dtype}" for name, shape, dtype, _ in items]
    out += ["attributes:"] + [f"  {k}: {v}" for k, v in sorted(attrs.items())] + _format_meta(meta)
    out.append(f"first {rows} rows:")
    for name, _, _, head in items:
        out.append(f"  {name}: {str(head.tolist() if hasattr(head, 'tolist') else head)[:300]}")
    return out


def _json(path: Path, rows: int) -> list[str]:
    obj = io.read_json(path, checked=False)
    out = [f"{path}  (JSON)"]
    if isinstance(obj, dict):
        for key, value in sorted(obj.items()):
            shown = f"list of {len(value)}: {json.dumps(value[:rows])[:300]}" if isinstance(value, list) else \
                json.dumps(value)[:300]
            out.append(f"  {key}: {shown}")
    else:
        out.append(json.dumps(obj)[:1000])
    return out


def describe_artifact(path: Path, rows: int = 5) -> str:
    """Schema, row count, version stamps and first rows of a Parquet, HDF5 or JSON artifact."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        lines = _parquet(path, rows)
    elif suffix in (".h5", ".hdf5"):
        lines = _h5(path, rows)
    elif suffix == ".json":
        lines = _json(path, rows)
    else:
        raise ValueError(f"{path}: unknown artifact type {suffix!r} (expected .parquet, .h5 or .json)")
    return "\n".join(lines)
