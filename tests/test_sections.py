"""sections stage: full / global / local texts from robocrys parts (docs/method.md §3.2).

The rows below are real robocrys 0.2.13 output (raw format) for mp-399 (layered PtTe2, every part
non-empty) and JVASP-5 (rutile TiO2, one 3-D framework: empty component makeup).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crys_pipeline import sections
from crys_pipeline.io import read_meta, write_parquet
from crys_pipeline.schemas import DESCRIPTIONS

PTTE2 = {
    "material_id": "mp-399", "status": "ok", "error": "",
    "mineral": "PtTe2 is Calaverite structured and crystallizes in the trigonal P-3m1 space group.",
    "component_makeup": "The structure is two-dimensional and consists of one PtTe2 sheet oriented in the "
    "(0, 0, 1) direction.",
    "components": "Pt(1)4+ is bonded to six equivalent Te(1)2- atoms to form edge-sharing PtTe6 octahedra. All "
    "Pt(1)-Te(1) bond lengths are 2.73 Å. Te(1)2- is bonded in a 3-coordinate geometry to three equivalent "
    "Pt(1)4+ atoms.",
    "spg_number": 164, "crystal_system": "trigonal", "dimensionality": 2,
}
RUTILE = {
    "material_id": "JVASP-5", "status": "ok", "error": "",
    "mineral": "TiO2 is Rutile structured and crystallizes in the tetragonal P4_2/mnm space group.",
    "component_makeup": "",
    "components": "Ti(1)4+ is bonded to six equivalent O(1)2- atoms to form a mixture of edge and corner-sharing "
    "TiO6 octahedra. The corner-sharing octahedral tilt angles are 49°. There are four shorter (1.96 Å) and two "
    "longer (1.99 Å) Ti(1)-O(1) bond lengths. O(1)2- is bonded in a distorted trigonal planar geometry to three "
    "equivalent Ti(1)4+ atoms.",
    "spg_number": 136, "crystal_system": "tetragonal", "dimensionality": 3,
}
TIMED_OUT = {
    "material_id": "JVASP-1", "status": "timeout", "error": "no result within 120 s; worker killed",
    "mineral": "", "component_makeup": "", "components": "", "spg_number": None, "crystal_system": None,
    "dimensionality": None,
}


def _row(parts: dict) -> dict:
    """A full descriptions row: robocrys' description is the space-join of the non-empty parts."""
    text = " ".join(parts[p] for p in ("mineral", "component_makeup", "components") if parts[p])
    return {**parts, "description": text, "elapsed_s": 1.0, "cpu_s": 1.0, "formula": "", "spg_symbol": None,
            "symprec": 0.01 if parts["status"] == "ok" else None, "oxidation_states": True}


@pytest.fixture
def descriptions(tmp_path: Path) -> Path:
    """A descriptions table (layout `descriptions`) of the three rows above."""
    rows = [_row(r) for r in (PTTE2, TIMED_OUT, RUTILE)]
    table = pa.Table.from_pylist([{f.name: r[f.name] for f in DESCRIPTIONS.schema} for r in rows])
    path = tmp_path / "descriptions.parquet"
    write_parquet(table, path, kind="descriptions", params={"fmt": "raw"},
                  extra={"source": "mp_2018", "versions": {"robocrys": "0.2.13"}, "counts": {}})
    return path


def test_split_is_prefix_and_suffix_of_the_full_text() -> None:
    """global = mineral + makeup (prefix of full), local = components (suffix), full = robocrys' text."""
    out = sections.split_row(_row(PTTE2), global_header=False)
    assert out["full"] == _row(PTTE2)["description"]
    assert out["global"] == PTTE2["mineral"] + " " + PTTE2["component_makeup"]
    assert out["local"] == PTTE2["components"]
    assert out["full"] == out["global"] + " " + out["local"]
    assert out["full"].startswith(out["global"]) and out["full"].endswith(out["local"])
    assert len(out["global"]) < len(out["full"]) and len(out["local"]) < len(out["full"])


def test_empty_makeup_leaves_no_double_space() -> None:
    """A single 3-D framework has no component-makeup sentence: global is the mineral sentence alone."""
    out = sections.split_row(_row(RUTILE), global_header=False)
    assert out["global"] == RUTILE["mineral"]
    assert "  " not in out["full"] and out["full"] == RUTILE["mineral"] + " " + RUTILE["components"]


def test_header_prepended_to_full_and_global_only() -> None:
    """The optional header carries space group number, crystal system and dimensionality."""
    out = sections.split_row(_row(PTTE2), global_header=True)
    head = "Space group number 164. Crystal system trigonal. Dimensionality 2."
    assert out["full"] == head + " " + _row(PTTE2)["description"]
    assert out["global"] == head + " " + PTTE2["mineral"] + " " + PTTE2["component_makeup"]
    assert out["local"] == PTTE2["components"]
    assert out["full"].startswith(out["global"]) and out["full"].endswith(out["local"])


def test_failed_row_kept_with_empty_texts() -> None:
    """A timed-out description stays a row with its status and reason, all texts empty."""
    out = sections.split_row(_row(TIMED_OUT), global_header=True)
    assert out == {"material_id": "JVASP-1", "status": "timeout", "error": TIMED_OUT["error"],
                   "full": "", "global": "", "local": ""}


def test_inconsistent_parts_are_an_error() -> None:
    """Parts that do not rebuild the stored description mean a corrupt table: refuse it."""
    row = {**_row(PTTE2), "description": "something else"}
    with pytest.raises(ValueError, match="do not rebuild"):
        sections.split_row(row, global_header=False)


def test_build_sections_file(descriptions: Path, tmp_path: Path) -> None:
    """Same rows and order as the descriptions table; counts and settings in the metadata."""
    out = tmp_path / "sections.parquet"
    sections.build_sections(descriptions, global_header=True, out=out)
    rows = pq.read_table(out).to_pylist()
    assert [r["material_id"] for r in rows] == ["mp-399", "JVASP-1", "JVASP-5"]
    assert [r["status"] for r in rows] == ["ok", "timeout", "ok"]
    assert rows[2]["global"].startswith("Space group number 136. Crystal system tetragonal. Dimensionality 3.")
    meta = read_meta(out)
    assert meta["kind"] == "sections" and meta["params"]["global_header"] is True
    assert meta["counts"] == {"rows": 3, "ok": 2, "not_ok": 1, "ok_empty_global": 0, "ok_empty_local": 0}
    assert meta["versions"] == {"robocrys": "0.2.13"} and meta["params"]["describe"] == {"fmt": "raw"}
