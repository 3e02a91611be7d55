"""`crys-pipeline inspect`: verify any artifact, then print a human-readable summary of it.

Every artifact kind of the README's table is covered: snapshot manifests, split files and every JSON
object (self-sha256), structures / rejected / descriptions / sections / predictions Parquet (layout and
page checksums, and a graph shard's sha256 in its folder's manifest.json), the embeddings HDF5 (the
sha256 of every dataset), a graph folder (`io.read_graph_dir`), a run folder and each of its files
(`model.pt`, `model.json`, `metrics.jsonl`, `predictions.parquet` against the sha256 its summary.json
records; model.pt also against model.json), and a table's CSV / Markdown (rebuilt from the summaries of
its runs under `results/train/` and compared byte for byte). Verification is the default; a damaged file
raises the readers' one-line error (the CLI exits 1). `verify=False` prints what can be read without it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crys_pipeline import io
from crys_pipeline.run_id import RUN_ID_FIELDS, RunId
from crys_pipeline.schemas import RUN_SUMMARY

_META_SKIP = ("params",)
SUMMARY = "summary.json"
MODEL_JSON = "model.json"
MANIFEST = "manifest.json"


def _format_meta(meta: dict) -> list[str]:
    lines = [f"  {k}: {json.dumps(v)[:200]}" for k, v in sorted(meta.items()) if k not in _META_SKIP]
    if "params" in meta:
        lines.append(f"  params: {json.dumps(meta['params'], sort_keys=True)[:600]}")
    return lines


def _against_run(path: Path) -> str | None:
    """Check a file of a run folder against the sha256 its summary.json records (None: not a run's file)."""
    summary = path.parent / SUMMARY
    if path.name == SUMMARY or not summary.is_file():
        return None
    recorded = io.read_json(summary, layout=RUN_SUMMARY)["files"]
    if path.name not in recorded:
        return None
    io.verify_files(path.parent, {path.name: recorded[path.name]})
    return f"sha256 recorded in {summary}"


def _against_manifest(path: Path) -> str | None:
    """Check a graph shard against its folder's manifest.json (None: not a shard of a graph folder)."""
    if not path.name.startswith("shard-") or not (path.parent / MANIFEST).is_file():
        return None
    io.read_graph_dir(path.parent)
    return f"sha256 recorded in {path.parent / MANIFEST}, whole folder read"


def _parquet(path: Path, rows: int, verify: bool) -> tuple[list[str], str]:
    schema, n, meta, head = io.parquet_head(path, rows)
    checks = []
    if verify:
        io.read_parquet(path, meta.get("kind", "?"))  # layout, kind, version and every page checksum
        checks = ["layout and page checksums", *filter(None, (_against_manifest(path), _against_run(path)))]
    out = [f"{path}  (Parquet, {n} rows, {len(schema)} columns)", "schema:"]
    out += [f"  {f.name}: {f.type}" for f in schema]
    out += ["metadata:"] + (_format_meta(meta) or ["  (no crys_pipeline metadata)"])
    out.append(f"first {len(head)} rows:")
    out += ["  " + json.dumps(row, default=str)[:400] for row in head.to_pylist()]
    return out, ", ".join(checks)


def _h5(path: Path, rows: int, verify: bool) -> tuple[list[str], str]:
    attrs, items = io.h5_summary(path, rows)
    meta = json.loads(attrs.pop(io.META_KEY)) if io.META_KEY in attrs else {}
    verifier = io.verify_tokens if meta.get("kind") == "tokens" else io.verify_embeddings
    checked = verifier(path) if verify else 0
    out = [f"{path}  (HDF5, {len(items)} datasets)", "datasets:"]
    out += [f"  {name}: shape {shape}, {dtype}" for name, shape, dtype, _ in items]
    out += ["attributes:"] + [f"  {k}: {v}" for k, v in sorted(attrs.items())] + _format_meta(meta)
    out.append(f"first {rows} rows:")
    for name, _, _, head in items:
        out.append(f"  {name}: {str(head.tolist() if hasattr(head, 'tolist') else head)[:300]}")
    return out, f"layout and the sha256 of all {checked} datasets" if verify else ""


def _plain_json(path: Path) -> Any:
    """A JSON file as it is, no checksum checked (`--no-verify`)."""
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise io.corrupt(path, exc) from exc


def _json(path: Path, rows: int, verify: bool) -> tuple[list[str], str]:
    obj = io.read_json(path) if verify else _plain_json(path)
    checks = [f"{io.CHECKSUM_KEY} self-checksum"] if verify else []
    if verify and path.name == MODEL_JSON:
        io.read_model_json(path.parent)
        checks.append("run_model layout, model.pt's sha256")
    if verify:
        checks += filter(None, [_against_run(path)])
    out = [f"{path}  (JSON)"]
    if isinstance(obj, dict):
        for key, value in sorted(obj.items()):
            shown = f"list of {len(value)}: {json.dumps(value[:rows])[:300]}" if isinstance(value, list) else \
                json.dumps(value)[:300]
            out.append(f"  {key}: {shown}")
    else:
        out.append(json.dumps(obj)[:1000])
    return out, ", ".join(checks)


def _jsonl(path: Path, rows: int, verify: bool) -> tuple[list[str], str]:
    records = io.read_jsonl(path)
    check = _against_run(path) if verify else None
    out = [f"{path}  (JSON lines, {len(records)} records)", f"first {min(rows, len(records))} records:"]
    out += ["  " + json.dumps(rec, sort_keys=True)[:400] for rec in records[:rows]]
    return out, ", ".join(["every line parses", *filter(None, [check])]) if verify else ""


def _torch(path: Path, rows: int, verify: bool) -> tuple[list[str], str]:
    state = io.read_torch(path)  # tensors and plain values only, never code
    checks = ["tensors and plain values only"]
    if verify and path.name == "model.pt" and (path.parent / MODEL_JSON).is_file():
        io.read_model_json(path.parent)
        checks.append(f"sha256 recorded in {path.parent / MODEL_JSON}")
    if verify:
        checks += filter(None, [_against_run(path)])
    tensors = {k: v for k, v in state.items() if hasattr(v, "shape")} if isinstance(state, dict) else {}
    out = [f"{path}  (torch, {len(tensors)} tensors, {sum(int(v.numel()) for v in tensors.values()):,} values)"]
    out += [f"  {name}: {list(value.shape)} {value.dtype}" for name, value in list(tensors.items())[:rows]]
    return out, ", ".join(checks) if verify else ""


def _table(path: Path, rows: int, verify: bool) -> tuple[list[str], str]:
    from crys_pipeline import tables

    csv_path = path.with_suffix(".csv")
    try:
        found = tables.read_table_csv(csv_path)
    except (ValueError, KeyError) as exc:  # not UTF-8, a number that does not parse, a broken row
        raise exc if str(csv_path) in str(exc) else io.corrupt(csv_path, exc) from exc
    check = ""
    if verify:
        _rebuild_matches(csv_path, found)
        check = f"rebuilt from the summary.json of its {sum(r['n_seeds'] for r in found)} runs: identical"
    if path.suffix == ".md":
        text = path.read_text().splitlines()
        return [f"{path}  (Markdown table, {len(text)} lines)", *text[: rows + 4]], check
    out = [f"{path}  (table CSV, {len(found)} rows)"]
    out += ["  " + json.dumps({k: r[k] for k in ("property", "variant", "mae_mean", "n_seeds", "split_hash")},
                              default=str) for r in found[:rows]]
    return out, check


def _rebuild_matches(csv_path: Path, found: list[dict[str, Any]]) -> None:
    """Raise ArtifactError unless the table's CSV and Markdown equal the table rebuilt from its runs' summaries."""
    from crys_pipeline import tables

    if not found:
        raise io.ArtifactError(f"{csv_path}: a table without rows; delete it and rerun its `tables` job")
    first = found[0]
    spec = {"source": first["source"], "regime": first["regime"],
            "targets": list(dict.fromkeys(r["property"] for r in found)),
            "variants": list(dict.fromkeys(r["variant"] for r in found))}
    runs = [RunId(spec["source"], r["property"], r["variant"], spec["regime"], int(seed)).folder(csv_path.parent)
            / SUMMARY for r in found for seed in r["seeds"].split()]
    missing = [str(p) for p in runs if not p.is_file()]
    if missing:
        raise io.ArtifactError(f"{csv_path}: cannot be verified, the summaries of its runs are missing (e.g. "
                               f"{missing[0]}); use --no-verify to print it anyway")
    rows = tables.assemble_table(first["table"], spec=spec, units={r["property"]: r["unit"] for r in found},
                                 runs=runs)
    for path, text in ((csv_path, tables.table_csv(rows)),
                       (csv_path.with_suffix(".md"), tables.table_markdown(first["table"], spec, rows))):
        if path.is_file() and path.read_text(errors="replace") != text:
            raise io.corrupt(path, "differs from the table rebuilt from the summaries of its runs: edited, damaged "
                             "or made from other runs")


def _graph_dir(path: Path, rows: int, verify: bool) -> tuple[list[str], str]:
    table = io.read_graph_dir(path) if verify else None
    manifest = io.read_json(path / MANIFEST) if verify else _plain_json(path / MANIFEST)
    out = [f"{path}  (graph folder, {len(manifest['shards'])} shards)", f"  counts: {manifest['counts']}",
           f"  params: {json.dumps(manifest['params'], sort_keys=True)[:600]}",
           *(f"  {s['file']}: {s['rows']} rows, {s['ok']} ok, {s['failed']} failed" for s in manifest["shards"])]
    if table is not None:
        out.append(f"first {min(rows, table.num_rows)} rows:")
        out += ["  " + json.dumps(r) for r in table.select(["material_id", "status", "natoms", "nedges", "cutoff"])
                .slice(0, rows).to_pylist()]
    return out, "manifest.json, the sha256 and page checksums of every shard, one complete build" if verify else ""


def _run_dir(path: Path, rows: int, verify: bool) -> tuple[list[str], str]:
    summary = io.read_json(path / SUMMARY, layout=RUN_SUMMARY) if verify else _plain_json(path / SUMMARY)
    checks = ""
    if verify:
        io.verify_files(path, summary["files"])
        io.read_model_json(path)
        io.read_torch(path / "model.pt")
        io.read_parquet(path / "predictions.parquet", "predictions")
        io.read_jsonl(path / "metrics.jsonl")
        checks = f"summary.json, the sha256 of {', '.join(sorted(summary['files']))}, model.pt's load"
    keys = (*RUN_ID_FIELDS, "test_mae", "val_mae", "best_epoch", "epochs_run", "stop_reason", "n_train", "n_val",
            "n_test", "encoder", "split_hash")
    out = [f"{path}  (run folder)", *(f"  {k}: {json.dumps(summary.get(k))}" for k in keys)]
    out += [f"  {name}: {(path / name).stat().st_size:,} bytes" for name in sorted(summary["files"])]
    return out, checks


def _reader(path: Path) -> Callable[[Path, int, bool], tuple[list[str], str]]:
    if path.is_dir():
        if (path / MANIFEST).is_file():
            return _graph_dir
        if (path / SUMMARY).is_file():
            return _run_dir
        raise ValueError(f"{path}: not an artifact folder (a graph folder holds {MANIFEST}, a run folder "
                         f"{SUMMARY})")
    readers = {".parquet": _parquet, ".h5": _h5, ".hdf5": _h5, ".json": _json, ".jsonl": _jsonl, ".pt": _torch,
               ".csv": _table, ".md": _table}
    if path.suffix.lower() not in readers:
        raise ValueError(f"{path}: unknown artifact type {path.suffix!r} (expected a graph or run folder, or "
                         f"{', '.join(readers)})")
    return readers[path.suffix.lower()]


def describe_artifact(path: Path, rows: int = 5, verify: bool = True) -> str:
    """Verify an artifact (unless `verify` is False), then its schema, counts, version stamps and first rows.

    Raises:
        FileNotFoundError: no such path.
        ArtifactError: the artifact is damaged, edited or inconsistent with what recorded it (names the file).
        ValueError: not an artifact kind of this pipeline.
    """
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    lines, checks = _reader(path)(path, rows, verify)
    status = f"integrity: verified ({checks})" if verify else "integrity: not verified (--no-verify)"
    return "\n".join([lines[0], status, *lines[1:]])
