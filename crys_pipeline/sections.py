"""Stage `sections`: full / global / local texts from the robocrys parts (docs/method.md §3.2).

The split uses robocrys' structured output, not a regex over the text:

* global = the `mineral` part + the `component_makeup` part (formula, mineral, crystal system,
  space group symbol, dimensionality and components when not one 3-D framework);
* local = the `components` part (site coordination, geometry, connectivity, tilts, bond lengths);
* full = global + " " + local (empty parts skipped), which is exactly robocrys' description.

So global is a prefix and local a suffix of full. An optional templated header (space group
number, crystal system, dimensionality; `GLOBAL_HEADER`) is prepended to both full and global, so
the ablation stays consistent. Failed or timed-out descriptions stay as rows with empty texts.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow as pa

from crys_pipeline.io import check_lineage, read_meta, read_parquet, write_parquet
from crys_pipeline.schemas import SECTIONS, STATUS_OK

log = logging.getLogger(__name__)

#: Header template; dimensionality is robocrys' max over components (0-3).
GLOBAL_HEADER = "Space group number {spg_number}. Crystal system {crystal_system}. Dimensionality {dimensionality}."
_COLUMNS = ["material_id", "status", "error", "mineral", "component_makeup", "components", "description",
            "spg_number", "crystal_system", "dimensionality"]


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def header(row: dict[str, Any]) -> str:
    """The templated global header of one ok descriptions row."""
    return GLOBAL_HEADER.format(**{k: row[k] for k in ("spg_number", "crystal_system", "dimensionality")})


def split_row(row: dict[str, Any], global_header: bool) -> dict[str, str]:
    """The full / global / local texts of one descriptions row (all empty unless its status is ok).

    Raises:
        ValueError: the parts do not rebuild the stored description (an inconsistent table).
    """
    out = {"material_id": row["material_id"], "status": row["status"], "error": row["error"]}
    if row["status"] != STATUS_OK:
        return {**out, "full": "", "global": "", "local": ""}
    global_text = _join(row["mineral"], row["component_makeup"])
    local_text = row["components"]
    full = _join(global_text, local_text)
    if full != row["description"]:
        raise ValueError(f"{row['material_id']}: robocrys parts do not rebuild the stored description")
    if global_header:
        prefix = header(row)
        full, global_text = _join(prefix, full), _join(prefix, global_text)
    return {**out, "full": full, "global": global_text, "local": local_text}


def _counts(rows: list[dict[str, str]]) -> dict[str, int]:
    ok = [r for r in rows if r["status"] == STATUS_OK]
    return {
        "rows": len(rows), "ok": len(ok), "not_ok": len(rows) - len(ok),
        "ok_empty_global": sum(not r["global"] for r in ok), "ok_empty_local": sum(not r["local"] for r in ok),
    }


def build_sections(
    descriptions: Path, *, global_header: bool, out: Path, structures: Path | None = None
) -> None:
    """Write the sections table: one row per descriptions row, same order.

    Args:
        descriptions: results/text/{source}/descriptions.parquet (merged describe output).
        global_header: prepend `GLOBAL_HEADER` to the full and global texts.
        out: results/text/{source}/sections.parquet.
        structures: the structures file the descriptions were made from; when given, the descriptions'
            recorded structures sha256 is checked against it (stale or swapped inputs are refused).
    """
    table_in = read_parquet(descriptions, "descriptions", columns=_COLUMNS)
    rows = [split_row(r, global_header) for r in table_in.to_pylist()]
    meta_in = read_meta(descriptions)
    if structures is not None:
        check_lineage(structures, {descriptions: meta_in.get("structures_sha256")})
    counts = _counts(rows)
    params = {"global_header": global_header, "header_template": GLOBAL_HEADER if global_header else None,
              "describe": meta_in.get("params", {})}
    meta = {"source": meta_in.get("source"), "versions": meta_in.get("versions"), "counts": counts,
            "structures_sha256": meta_in.get("structures_sha256")}
    table = pa.Table.from_pylist(rows) if rows else SECTIONS.schema.empty_table()
    write_parquet(table, out, kind="sections", params=params, extra=meta)
    log.info("sections: %s", counts)
