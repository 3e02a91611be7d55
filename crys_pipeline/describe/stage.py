"""The describe stage: structures in, one descriptions row per structure out, in shards and merged.

Structures are described in persistent worker processes (`DescribePool`, a `TimeoutPool` running
`crys_pipeline.describe.engine`), started with PYTHONHASHSEED=0 (forked from a forkserver that has
the imports done): robocrys orders some words by iterating Python sets of strings ("a mixture of
corner and edge-sharing" vs "edge and corner-sharing"), so stock robocrys' text changes from one
process to the next; the fixed seed makes ours reproducible (it equals stock robocrys run with
PYTHONHASHSEED=0). Each structure gets a wall-clock limit; a worker past it is killed, the row is
recorded as `timeout` and a fresh worker takes its place. Every input id comes out exactly once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pyarrow as pa
from pymatgen.core import Structure

from crys_pipeline.describe.engine import PARTS, empty_row, start_worker
from crys_pipeline.describe.pool import TimeoutPool
from crys_pipeline.describe.settings import PYTHON_HASH_SEED, describe_params
from crys_pipeline.io import read_meta, read_parquet, sha256_file, write_parquet
from crys_pipeline.schemas import DESCRIPTIONS, STATUS_FAILED, STATUS_OK, STATUS_TIMEOUT
from crys_pipeline.settings import DescribeSettings

log = logging.getLogger(__name__)

_SHARD = re.compile(r"^(\d+)-of-(\d+)$")


def tool_versions() -> dict[str, str]:
    """Versions of the libraries that shape the text (stamped in every descriptions file)."""
    out = {}
    for name in ("robocrys", "pymatgen", "spglib", "matminer", "numpy", "scipy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def _lost_row(material_id: str, timed_out: bool, error: str, elapsed_s: float) -> dict[str, Any]:
    """The row of a structure whose worker passed the time limit (`timeout`) or died (`failed`)."""
    return empty_row(material_id, status=STATUS_TIMEOUT if timed_out else STATUS_FAILED, error=error,
                     elapsed_s=elapsed_s)


class DescribePool(TimeoutPool):
    """Persistent robocrys worker processes with a per-structure wall-clock limit.

    A worker that passes the limit (or dies) is killed and replaced; the others keep going.
    Use as a context manager; `run` may be called several times with `(material_id, structure)`
    items and returns descriptions rows in input order.
    """

    def __init__(self, settings: DescribeSettings, workers: int = 1) -> None:
        super().__init__(start_worker, settings, settings.timeout_s, _lost_row, workers=workers,
                         env={"PYTHONHASHSEED": PYTHON_HASH_SEED}, name="describe", unit="structure")
        self.settings = settings


def describe_structures(
    items: Iterable[tuple[str, Structure]], settings: DescribeSettings, workers: int = 1
) -> list[dict[str, Any]]:
    """Describe structures in a fresh pool of `workers` processes; one row per item, input order."""
    with DescribePool(settings, workers) as pool:
        return pool.run(list(items))


ROW_COLUMNS = (
    "material_id", "status", "error", "elapsed_s", "cpu_s", *PARTS, "description", "formula", "spg_symbol",
    "spg_number", "crystal_system", "dimensionality", "symprec", "oxidation_states",
)


def parse_shard(shard: str) -> tuple[int, int]:
    """'2-of-4' -> (1, 4): zero-based shard index and shard count (Snakemake scatteritem)."""
    match = _SHARD.match(shard)
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise ValueError(f"shard {shard!r} is not of the form I-of-N with 1 <= I <= N")
    return int(match.group(1)) - 1, int(match.group(2))


def _read_structure_rows(path: Path) -> list[dict[str, Any]]:
    columns = ["material_id", "lattice", "species", "frac_coords"]
    return read_parquet(path, "structures", columns=columns).to_pylist()


def _to_item(row: dict[str, Any]) -> tuple[str, Structure | None, str]:
    """(id, structure, error): the structure is None when the row cannot be built."""
    from crys_pipeline.ingest import row_to_structure

    try:
        return row["material_id"], row_to_structure(row), ""
    except Exception as exc:  # an unbuildable row becomes a failed row
        return row["material_id"], None, f"cannot build structure: {type(exc).__name__}: {exc}"


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Descriptions rows -> Arrow table in `ROW_COLUMNS` order."""
    if not rows:
        return DESCRIPTIONS.schema.empty_table()
    return pa.Table.from_pylist([{c: r[c] for c in ROW_COLUMNS} for r in rows])


def _counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    counts = {s: 0 for s in (STATUS_OK, STATUS_FAILED, STATUS_TIMEOUT)}
    for row in rows:
        counts[row["status"]] += 1
    return counts


def describe_shard(
    structures: Path, *, shard: str, settings: DescribeSettings, workers: int, out: Path
) -> None:
    """Describe one scattergather shard (rows i with i % N == I-1) of a structures table.

    Args:
        structures: results/structures/{source}.parquet.
        shard: Snakemake scatteritem "I-of-N".
        settings: robocrys settings and per-structure time limit.
        workers: robocrys worker processes.
        out: results/text/{source}/describe/{shard}.parquet (written atomically at the end).
    """
    index, count = parse_shard(shard)
    items = [_to_item(r) for i, r in enumerate(_read_structure_rows(structures)) if i % count == index]
    log.info("shard %s: %d structures, %d workers, limit %g s", shard, len(items), workers, settings.timeout_s)
    good = [(mid, s) for mid, s, _ in items if s is not None]
    described = iter(describe_structures(good, settings, workers) if good else [])
    rows = [next(described) if s is not None else empty_row(mid, status=STATUS_FAILED, error=err)
            for mid, s, err in items]
    meta = {"source": read_meta(structures).get("source"), "versions": tool_versions(), "counts": _counts(rows)}
    write_parquet(rows_to_table(rows), out, kind="descriptions",
                  params={**describe_params(settings), "shard": shard}, extra=meta)
    log.info("shard %s: %s", shard, meta["counts"])


def merge_shards(structures: Path, *, shards: list[Path], out: Path) -> None:
    """Gather shard files into one descriptions table in the structures table's order.

    Raises:
        ValueError: shards made with different settings or library versions, or an input id that
            is missing, duplicated or unknown.
    """
    if not shards:
        raise ValueError("no describe shards to merge")
    ids = [r["material_id"] for r in read_parquet(structures, "structures", columns=["material_id"]).to_pylist()]
    metas = [read_meta(p) for p in shards]
    params = [{k: v for k, v in m.get("params", {}).items() if k != "shard"} for m in metas]
    if any(p != params[0] for p in params) or any(m.get("versions") != metas[0].get("versions") for m in metas):
        raise ValueError("describe shards were made with different settings or library versions; rerun them")
    by_id: dict[str, dict[str, Any]] = {}
    for path in shards:
        for row in read_parquet(path, "descriptions").to_pylist():
            if row["material_id"] in by_id:
                raise ValueError(f"{row['material_id']!r} appears in more than one describe shard")
            by_id[row["material_id"]] = row
    missing = [i for i in ids if i not in by_id]
    unknown = sorted(set(by_id) - set(ids))
    if missing or unknown:
        raise ValueError(f"describe shards do not cover the input: missing {missing[:5]} "
                         f"({len(missing)}), unknown {unknown[:5]} ({len(unknown)})")
    rows = [by_id[i] for i in ids]
    meta = {"source": metas[0].get("source"), "versions": metas[0].get("versions"), "counts": _counts(rows),
            "shards": len(shards), "structures_sha256": sha256_file(structures)}
    write_parquet(rows_to_table(rows), out, kind="descriptions", params=params[0], extra=meta)
    log.info("merged %d shards: %s", len(shards), meta["counts"])
