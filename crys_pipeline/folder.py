"""A folder of structure files plus an ALIGNN-style `id_prop.csv` as a source (provider `folder`).

The convention is ALIGNN's `train_alignn.py --root_dir DIR --file_format poscar|cif|xyz`: the folder
holds the structure files and a table of `filename,target` rows without a header. A table whose first
row has a non-numeric second cell is read as having a header instead: its first column is the file
name, a column named `split` holds train/val/test labels, every other column is a target field (a first
row whose first cell names a file in the folder is data, so a bad first value is a rejected row).

`download` (`fetch_folder`) records the sha256 of the table and of every listed file, and the names of
files in the folder the table does not list (counted and reported, never used). `ingest` reads the
listed files through `folder_records`; each table row becomes a structure or a rejected row whose
reason names the table line, the file and the field: missing file, unreadable file, disordered
structure, a target that is not a finite number, a bad split label, a duplicate filename. Overlapping
atoms are caught by the common `ingest.validate`. The material id is the file name, as in ALIGNN.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crys_pipeline.ingest import RawRecord
from crys_pipeline.io import sha256_file, write_json

log = logging.getLogger(__name__)

FORMAT_FOLDER = "folder_id_prop"
FILE_FORMATS = ("auto", "poscar", "cif", "vasp", "xyz")
SUFFIX_FORMATS = {".cif": "cif", ".vasp": "poscar", ".poscar": "poscar", ".xyz": "xyz", ".extxyz": "xyz"}
SPLIT_COLUMN = "split"
HEADERLESS_FIELD = "target"  # the field name of the one target column of a headerless table
LABELS = ("train", "val", "test")


@dataclass
class IdPropRow:
    """One data row of the id_prop table."""

    line: int
    filename: str
    values: dict[str, str]
    split: str | None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_id_prop(path: Path) -> tuple[list[str], list[IdPropRow]]:
    """(target fields, rows) of an id_prop table; headerless tables have the one field `target`.

    Raises:
        ValueError: an empty table, or a header without a target column.
    """
    with open(path, newline="") as handle:
        lines = [(n, [c.strip() for c in row]) for n, row in enumerate(csv.reader(handle), 1) if any(row)]
    if not lines:
        raise ValueError(f"{path}: the id_prop table is empty; expected rows `filename,target`")
    first = lines[0][1]  # a header unless its second cell is a number or its first cell names a file in the folder
    header = len(first) > 1 and not _is_number(first[1]) and not (path.parent / first[0]).is_file()
    names = first[1:] if header else [HEADERLESS_FIELD] + [f"{HEADERLESS_FIELD}{i}" for i in range(1, len(first) - 1)]
    fields = [n for n in names if n != SPLIT_COLUMN]
    if not fields:
        raise ValueError(f"{path}: line 1 names no target column (columns: {first})")
    rows = []
    for number, cells in lines[1:] if header else lines:
        values = dict(zip(names, cells[1:] + [""] * (len(names) + 1 - len(cells)), strict=False))
        split = values.pop(SPLIT_COLUMN, None) if SPLIT_COLUMN in names else None
        rows.append(IdPropRow(number, cells[0], values, split))
    return fields, rows


def listed_files(root_dir: Path, id_prop: str) -> list[Path]:
    """The id_prop table and the existing files it lists (the `download` rule's inputs; cheap, no parsing)."""
    table = root_dir / id_prop
    if not table.is_file():
        return []
    _, rows = read_id_prop(table)
    return [table, *sorted({root_dir / r.filename for r in rows if r.filename and (root_dir / r.filename).is_file()})]


def has_split_labels(root_dir: Path, id_prop: str, split_ids: dict[str, list[str]] | None) -> bool:
    """Whether a folder gives its own split: fixed `split_ids` lists or a `split` column in the table."""
    table = root_dir / id_prop
    return bool(split_ids) or (table.is_file() and any(r.split is not None for r in read_id_prop(table)[1]))


def fetch_folder(
    source: str, *, root_dir: Path, id_prop: str, file_format: str, split_ids: dict[str, list[str]] | None,
    out: Path,
) -> dict[str, Any]:
    """Write the manifest of a folder source: sha256 of the table and each listed file, unlisted files.

    Raises:
        FileNotFoundError: `root_dir` is not a folder or holds no `id_prop` table.
    """
    table = root_dir / id_prop
    if not root_dir.is_dir():
        raise FileNotFoundError(f"source {source!r}: root_dir {root_dir} is not a folder; point "
                                f"sources.{source}.root_dir at the folder holding {id_prop} and the structure files")
    if not table.is_file():
        raise FileNotFoundError(f"source {source!r}: {table} does not exist; the folder needs an id_prop table "
                                "of `filename,target` rows (set sources.{source}.id_prop to its name)")
    listed = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
              for p in listed_files(root_dir, id_prop)[1:]}
    names = {r.filename for r in read_id_prop(table)[1]}
    unlisted = sorted(p.name for p in root_dir.iterdir()
                      if p.is_file() and p.name != id_prop and not p.name.startswith(".") and p.name not in names)
    if unlisted:
        log.warning("source %s: %d files in %s are not listed in %s and are not used (e.g. %s)", source,
                    len(unlisted), root_dir, id_prop, ", ".join(unlisted[:5]))
    manifest = {
        "source": source, "provider": "folder", "origin": "local",
        "files": {"structures": {"path": str(table.resolve()), "format": FORMAT_FOLDER,
                                 "sha256": sha256_file(table), "bytes": table.stat().st_size}},
        "folder": {"root_dir": str(root_dir.resolve()), "file_format": file_format, "split_ids": split_ids,
                   "listed": listed, "unlisted": unlisted},
    }
    write_json(manifest, out)
    log.info("source %s: %s lists %d files (%d present), %d unlisted files", source, table, len(names),
             len(listed), len(unlisted))
    return manifest


def file_format_of(path: Path, file_format: str) -> str:
    """The reader of one file: `file_format`, or with `auto` the one its suffix names (POSCAR/CONTCAR by name).

    Raises:
        ValueError: `auto` and a suffix that names no known format.
    """
    if file_format == "vasp":
        return "poscar"
    if file_format != "auto":
        return file_format
    if path.name.upper().startswith(("POSCAR", "CONTCAR")):
        return "poscar"
    fmt = SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot tell the format from the suffix {path.suffix!r} (known: "
                         f"{sorted(SUFFIX_FORMATS)}); set file_format to one of {list(FILE_FORMATS[1:])}")
    return fmt


def read_structure(path: Path, file_format: str):
    """A pymatgen Structure from one file (`poscar`, `cif` or extended `xyz` with a Lattice).

    Raises:
        ValueError: the file cannot be parsed or (xyz) has no lattice.
    """
    from pymatgen.core import Structure

    fmt = file_format_of(path, file_format)
    if fmt == "xyz":
        import ase.io
        from pymatgen.io.ase import AseAtomsAdaptor

        atoms = ase.io.read(path, format="extxyz")
        if atoms.cell.rank != 3:
            raise ValueError("an xyz file without a lattice (extended XYZ needs Lattice=\"...\" on line 2)")
        return AseAtomsAdaptor.get_structure(atoms)
    if fmt == "cif":
        from pymatgen.io.cif import CifParser

        return CifParser(path).parse_structures(primitive=False)[0]
    return Structure.from_str(path.read_text(), fmt="poscar")


def _target_values(row: IdPropRow, fields: list[str], single: bool) -> tuple[dict[str, float | None], str | None]:
    """The numbers of one row, or the problem: a value that is not a finite number (empty = missing with a header)."""
    out: dict[str, float | None] = {}
    for name in fields:
        text = row.values.get(name, "")
        if not single and text.lower() in ("", "na", "nan"):
            out[name] = None
            continue
        number = float(text) if _is_number(text) else math.nan
        if not math.isfinite(number):
            return out, f"target {name!r} = {text!r} is not a finite number"
        out[name] = number
    return out, None


def _split_labels(rows: list[IdPropRow], split_ids: dict[str, list[str]] | None, table: Path) -> dict[str, str | None]:
    """Map filename -> train/val/test from the `split` column or the fixed `split_ids` lists (empty: neither)."""
    if split_ids is None:
        return {r.filename: r.split for r in rows if r.split is not None}
    if any(r.split is not None for r in rows):
        raise ValueError(f"{table}: the table has a `split` column and the config gives split_ids; keep one")
    names = {r.filename for r in rows}
    labels: dict[str, str | None] = {}
    for label, ids in split_ids.items():
        for name in ids:
            if name not in names:
                raise ValueError(f"split_ids.{label}: {name!r} is not listed in {table}")
            labels[name] = label
    return labels


def _row_record(
    row: IdPropRow, where: str, folder: dict[str, Any], fields: list[str], label: str | None
) -> RawRecord:
    """The RawRecord of one unique table row (a rejected one carries its `problem`)."""
    def rejected(problem: str) -> RawRecord:
        return RawRecord(row.filename, None, None, None, problem=f"{where}: {row.filename}: {problem}")

    values, problem = _target_values(row, fields, single=fields == [HEADERLESS_FIELD])
    if problem:
        return rejected(problem)
    if label is not None and label not in LABELS:
        return rejected(f"split {label!r} is not one of {list(LABELS)}")
    path = Path(folder["root_dir"]) / row.filename
    entry = folder["listed"].get(row.filename)
    if entry is None or not path.is_file():
        return rejected(f"missing file: {path} does not exist")
    if sha256_file(path) != entry["sha256"]:
        raise ValueError(f"{path} changed since download (sha256 mismatch); rerun download")
    try:
        structure = read_structure(path, folder["file_format"])
    except Exception as exc:  # any parser failure of a user file is a rejected row, not a crash
        return rejected(f"unreadable {folder['file_format']} file: {type(exc).__name__}: {exc}")
    if not structure.is_ordered:
        return rejected(f"disordered structure (partial occupancies, composition {structure.composition}); "
                        "only ordered structures can be graphs")
    return RawRecord(row.filename, structure.lattice.matrix.tolist(), [s.specie.symbol for s in structure],
                     structure.frac_coords.tolist(), values, {f: label for f in fields})


def folder_records(manifest: dict[str, Any]) -> Iterator[RawRecord]:
    """The RawRecords of a folder manifest, one per table row, in table order (ALIGNN's split order)."""
    table = Path(manifest["files"]["structures"]["path"])
    folder = manifest["folder"]
    fields, rows = read_id_prop(table)
    labels = _split_labels(rows, folder.get("split_ids"), table)
    first_line: dict[str, int] = {}
    for row in rows:
        where = f"{table.name} line {row.line}"
        if not row.filename:
            yield RawRecord(f"{table.name}:{row.line}", None, None, None, problem=f"{where}: no filename")
        elif row.filename in first_line:
            yield RawRecord(f"{table.name}:{row.line}", None, None, None,
                            problem=f"{where}: duplicate filename {row.filename!r} (first listed on line "
                                    f"{first_line[row.filename]}); this row is not used")
        else:
            first_line[row.filename] = row.line
            yield _row_record(row, where, folder, fields, labels.get(row.filename))
