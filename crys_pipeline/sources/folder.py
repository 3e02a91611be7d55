"""A folder of structure files plus an ALIGNN-style `id_prop.csv` as a source (provider `folder`).

The convention is ALIGNN's `train_alignn.py --root_dir DIR --file_format poscar|cif|xyz`: the folder
holds the structure files and a table of `filename,target` rows without a header. A table whose first
row has a non-numeric second cell is read as having a header instead: its first column is the file
name, a column named `split` holds train/val/test labels, every other column is a target field (a first
row whose first cell names a file in the folder is data, so a bad first value is a rejected row). The
table is read as spreadsheets write it: UTF-8 with or without a byte-order mark (Excel's "CSV UTF-8"),
any line ending. A file name may name a file in a subfolder (`s/x.vasp`).

Every listed path is resolved (symlinks and `..` followed, nothing opened) and one that lies outside
`root_dir` is refused: never opened, hashed or made a rule input; its row is rejected with the reason.

`download` (`fetch_folder`) records the sha256 of the table and of every listed file, and the names of
files in the folder the table does not list (counted and reported, never used). Paths are recorded as
configured (relative to the working directory when `root_dir` is), so moving the project keeps them valid.
`ingest` reads the listed files through `folder_records`; each table row becomes a structure or a
rejected row whose reason names the table line, the file and the field: a path outside the folder,
missing file, unreadable file, disordered structure, a target that is not a finite number, a bad split
label, a duplicate filename. An empty (or `na`) target or split cell is a missing value, not a rejection.
Overlapping atoms are caught by the common `ingest.validate`. The material id is the file name as the
table writes it, as in ALIGNN.
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crys_pipeline.io import sha256_file, write_json
from crys_pipeline.sources.records import SPLIT_LABELS, RawRecord

log = logging.getLogger(__name__)

FORMAT_FOLDER = "folder_id_prop"
FILE_FORMATS = ("auto", "poscar", "cif", "vasp", "xyz")
SUFFIX_FORMATS = {".cif": "cif", ".vasp": "poscar", ".poscar": "poscar", ".xyz": "xyz", ".extxyz": "xyz"}
SPLIT_COLUMN = "split"
HEADERLESS_FIELD = "target"  # the field name of the one target column of a headerless table
MISSING = ("", "na", "nan")  # cells that are a missing value (lower case), in a target or the split column


class OutsideFolder(ValueError):
    """A listed path that resolves (through a symlink, `..` or an absolute path) outside `root_dir`."""


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


def _table_lines(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, stripped cells) of the non-empty lines of a table (UTF-8, a byte-order mark dropped).

    Raises:
        ValueError: the file is not UTF-8 text.
    """
    raw = path.read_bytes().removeprefix(codecs.BOM_UTF8)  # Excel's "CSV UTF-8" starts with one
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ValueError(f"{path} is not UTF-8 text (byte {raw[exc.start]:#x} on line {line}); save it as "
                         "\"CSV UTF-8\" (Excel: File > Save As > CSV UTF-8)") from exc
    rows = csv.reader(io.StringIO(text, newline=""))
    return [(n, [c.strip() for c in row]) for n, row in enumerate(rows, 1) if any(row)]


def read_id_prop(path: Path) -> tuple[list[str], list[IdPropRow]]:
    """(target fields, rows) of an id_prop table; headerless tables have the one field `target`.

    Raises:
        ValueError: an empty table, a header without a target column, or a file that is not UTF-8.
    """
    lines = _table_lines(path)
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
        rows.append(IdPropRow(number, cells[0], values, None if split is None or split.lower() in MISSING else split))
    return fields, rows


def locate(root_dir: Path, name: str) -> Path:
    """`root_dir / name`, checked to stay inside `root_dir` once symlinks and `..` are resolved (nothing is opened).

    Raises:
        OutsideFolder: the path resolves outside `root_dir` (or cannot be resolved: a symlink loop).
    """
    path = root_dir / name
    try:
        resolved, root = path.resolve(), root_dir.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
        raise OutsideFolder(f"refused: the path cannot be resolved ({exc}), so it is not read") from exc
    if not resolved.is_relative_to(root):
        raise OutsideFolder(f"refused: resolves to {resolved}, which is outside the folder {root}; only files "
                            "inside root_dir are read")
    return path


def _inside(root_dir: Path, name: str) -> Path | None:
    """`locate`, or None for a path outside the folder."""
    try:
        return locate(root_dir, name)
    except OutsideFolder:
        return None


def _table(root_dir: Path, id_prop: str) -> Path | None:
    """The id_prop table when it is a file inside `root_dir`, else None."""
    table = _inside(root_dir, id_prop)
    return table if table is not None and table.is_file() else None


def listed_files(root_dir: Path, id_prop: str) -> list[Path]:
    """The id_prop table and the existing files it lists inside the folder (the `download` rule's inputs).

    Cheap (no parsing of structures): a path that resolves outside `root_dir` is never an input.
    """
    table = _table(root_dir, id_prop)
    if table is None:
        return []
    _, rows = read_id_prop(table)
    files = {p for p in (_inside(root_dir, r.filename) for r in rows if r.filename) if p is not None and p.is_file()}
    return [table, *sorted(files)]


def has_split_labels(root_dir: Path, id_prop: str, split_ids: dict[str, list[str]] | None) -> bool:
    """Whether a folder gives its own split: fixed `split_ids` lists or at least one label in a `split` column."""
    table = _table(root_dir, id_prop)
    return bool(split_ids) or (table is not None and any(r.split is not None for r in read_id_prop(table)[1]))


def _unlisted(root_dir: Path, table: Path, rows: list[IdPropRow]) -> list[str]:
    """Files under `root_dir` (subfolders included, hidden ones not) that the table does not list."""
    names = {os.path.normpath(r.filename) for r in rows if r.filename} | {os.path.relpath(table, root_dir)}
    return [f for f in files_below(root_dir) if f not in names]


def files_below(root_dir: Path) -> list[str]:
    """Every file under `root_dir` as a sorted path relative to it.

    Subfolders are included (links to folders are not followed); hidden files and folders are left out.
    """
    found = []
    for folder, subfolders, files in os.walk(root_dir):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        found += [os.path.relpath(os.path.join(folder, f), root_dir) for f in files if not f.startswith(".")]
    return sorted(found)


def _listed(source: str, root_dir: Path, table: Path, rows: list[IdPropRow]) -> dict[str, dict[str, Any]]:
    """sha256 and size of every existing file the rows name inside the folder, by the name the table writes."""
    listed, outside = {}, []
    for name in dict.fromkeys(r.filename for r in rows if r.filename):
        path = _inside(root_dir, name)
        if path is None:
            outside.append(name)
        elif path.is_file():
            listed[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    if outside:
        log.warning("source %s: %d rows of %s name files outside %s, which are refused and never read (e.g. %s)",
                    source, len(outside), table.name, root_dir, ", ".join(outside[:5]))
    return listed


def fetch_folder(
    source: str, *, root_dir: Path, id_prop: str, file_format: str, split_ids: dict[str, list[str]] | None,
    out: Path,
) -> dict[str, Any]:
    """Write the manifest of a folder source: sha256 of the table and each listed file, unlisted files.

    Paths are recorded as given (relative to the working directory when `root_dir` is relative).

    Raises:
        FileNotFoundError: `root_dir` is not a folder or holds no `id_prop` table.
    """
    if not root_dir.is_dir():
        raise FileNotFoundError(f"source {source!r}: root_dir {root_dir} is not a folder; point "
                                f"sources.{source}.root_dir at the folder holding {id_prop} and the structure files")
    try:
        table = locate(root_dir, id_prop)
    except OutsideFolder as exc:
        raise ValueError(f"source {source!r}: the id_prop table {root_dir / id_prop}: {exc}") from exc
    if not table.is_file():
        raise FileNotFoundError(f"source {source!r}: {table} does not exist; the folder needs an id_prop table "
                                f"of `filename,target` rows (set sources.{source}.id_prop to its name)")
    rows = read_id_prop(table)[1]
    listed = _listed(source, root_dir, table, rows)
    unlisted = _unlisted(root_dir, table, rows)
    if unlisted:
        log.warning("source %s: %d files in %s are not listed in %s and are not used (e.g. %s)", source,
                    len(unlisted), root_dir, id_prop, ", ".join(unlisted[:5]))
    manifest = {
        "source": source, "provider": "folder", "origin": "local",
        "files": {"structures": {"path": str(table), "format": FORMAT_FOLDER,
                                 "sha256": sha256_file(table), "bytes": table.stat().st_size}},
        "folder": {"root_dir": str(root_dir), "file_format": file_format, "split_ids": split_ids,
                   "listed": listed, "unlisted": unlisted},
    }
    write_json(manifest, out)
    log.info("source %s: %s lists %d files (%d present), %d unlisted files", source, table, len(rows),
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
        if not single and text.lower() in MISSING:
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


def _format(path: Path, file_format: str) -> tuple[str | None, str | None]:
    """(reader, None) for one file, or (None, the problem) when `auto` cannot tell it from the suffix."""
    try:
        return file_format_of(path, file_format), None
    except ValueError as exc:
        return None, str(exc)


def _row_record(
    row: IdPropRow, where: str, folder: dict[str, Any], fields: list[str], label: str | None
) -> RawRecord:
    """The RawRecord of one unique table row (a rejected one carries its `problem`)."""
    def rejected(problem: str) -> RawRecord:
        return RawRecord(row.filename, None, None, None, problem=f"{where}: {row.filename}: {problem}")

    try:
        path = locate(Path(folder["root_dir"]), row.filename)
    except OutsideFolder as exc:
        return rejected(str(exc))
    values, problem = _target_values(row, fields, single=fields == [HEADERLESS_FIELD])
    if problem:
        return rejected(problem)
    if label is not None and label not in SPLIT_LABELS:
        return rejected(f"split {label!r} is not one of {list(SPLIT_LABELS)}")
    entry = folder["listed"].get(row.filename)
    if entry is None or not path.is_file():
        return rejected(f"missing file: {path} does not exist")
    if sha256_file(path) != entry["sha256"]:
        raise ValueError(f"{path} changed since download (sha256 mismatch); rerun download")
    fmt, problem = _format(path, folder["file_format"])
    if problem:
        return rejected(problem)
    try:
        structure = read_structure(path, fmt)
    except Exception as exc:  # any parser failure of a user file is a rejected row, not a crash
        return rejected(f"unreadable {fmt} file: {type(exc).__name__}: {exc}")
    if not structure.is_ordered:
        return rejected(f"disordered structure (partial occupancies, composition {structure.composition}); "
                        "only ordered structures can be graphs")
    return RawRecord(row.filename, structure.lattice.matrix.tolist(), [s.specie.symbol for s in structure],
                     structure.frac_coords.tolist(), values, {f: label for f in fields})


def _log_unlabelled(source: str, table: Path, rows: list[IdPropRow]) -> None:
    """Say how many rows of a table with a `split` column have no label (they are kept, in no official split)."""
    unlabelled = [r for r in rows if r.filename and r.split is None]
    if unlabelled and any(r.split is not None for r in rows):
        first = unlabelled[0]
        log.warning("%s: %d of %d rows of %s have no split label (an empty or `na` cell, e.g. line %d: %s); a target "
                    "with split official leaves them out of train, val and test", source, len(unlabelled),
                    len(rows), table.name, first.line, first.filename)


def folder_records(manifest: dict[str, Any]) -> Iterator[RawRecord]:
    """The RawRecords of a folder manifest, one per table row, in table order (ALIGNN's split order)."""
    table = Path(manifest["files"]["structures"]["path"])
    folder = manifest["folder"]
    fields, rows = read_id_prop(table)
    labels = _split_labels(rows, folder.get("split_ids"), table)
    first_line: dict[str, int] = {}
    for row in rows:
        where = f"{table.name} line {row.line}"
        key = os.path.normpath(row.filename)  # `./s/x.vasp` and `s/x.vasp` are one file
        if not row.filename:
            yield RawRecord(f"{table.name}:{row.line}", None, None, None, problem=f"{where}: no filename")
        elif key in first_line:
            yield RawRecord(f"{table.name}:{row.line}", None, None, None,
                            problem=f"{where}: duplicate filename {row.filename!r} (first listed on line "
                                    f"{first_line[key]}); this row is not used")
        else:
            first_line[key] = row.line
            yield _row_record(row, where, folder, fields, labels.get(row.filename))
    _log_unlabelled(manifest["source"], table, rows)
