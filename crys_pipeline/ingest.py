"""Stage `ingest`: a source snapshot -> one validated row per material (structures Parquet).

Reads the snapshot named in the `download` manifest (after checking its sha256), maps each record to
canonical fields, optionally keeps a deterministic subset inside each official split, and validates
every structure. Records that cannot become a sound structure (unparseable, degenerate cell,
atoms closer than `MIN_DISTANCE` Angstrom, NaN coordinates, unknown element, an element heavier than
the atom-feature table covers, Z > 103) go to the rejected table with a reason; every selected input
id lands in exactly one of the two files. Snapshot lines that cannot be read at all (bad JSON, no id
field) are rejected too, under the id `file:line`. A left-handed cell (negative lattice determinant)
is a valid structure. Row order is the snapshot's order, which ALIGNN's seed-123 split depends on.

Missing targets (None, the string 'na', NaN) become null, as in ALIGNN's filter. A target value that
is not a number ('abc') or is infinite also becomes null, with a warning, and is listed (id, field,
value) in the structures metadata `bad_values`. A target whose `field` the snapshot lacks stops the
stage, naming the closest field names.

A `folder` source (your own structure files plus an ALIGNN-style id_prop table) is read by
`crys_pipeline.sources.folder`, whose records pass the same validation; its per-row problems (missing or
unreadable file, disordered structure, target not a finite number, duplicate filename) are rejected rows.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from crys_pipeline.atom_features import MAX_Z
from crys_pipeline.io import read_json, sha256_file, write_parquet
from crys_pipeline.schemas import split_column
from crys_pipeline.sources import folder, jarvis
from crys_pipeline.sources.records import RawRecord

log = logging.getLogger(__name__)

MIN_DISTANCE = 0.5  # Angstrom; closer atoms are a broken structure
MIN_VOLUME = 1e-3  # Angstrom^3; a smaller |det(lattice)| is a degenerate cell
#: `stratify_target` value that applies the subset counts to the official split of every target.
ALL_TARGETS = "all"


def read_snapshot(manifest: dict[str, Any]) -> Iterator[RawRecord]:
    """Iterate the canonical records of a manifest's snapshot after checking its sha256.

    The reader is the provider's (``crys_pipeline.sources``): `folder`, or the JARVIS-tools releases of
    `jarvis` and `mp` (offline JSON lines or the figshare zip).
    """
    for entry in manifest["files"].values():
        if sha256_file(entry["path"]) != entry["sha256"]:
            raise ValueError(f"snapshot {entry['path']} changed since download (sha256 mismatch); rerun download")
    provider = manifest["provider"]
    main = manifest["files"]["structures"]
    if provider == "folder":
        return folder.folder_records(manifest)
    if main["format"] == "offline_jsonl":
        return jarvis.offline_records(Path(main["path"]), provider)
    moduli_entry = manifest["files"].get("moduli")
    moduli = {r["material_id"]: r for r in read_json(moduli_entry["path"])} if moduli_entry else {}
    return jarvis.figshare_records(Path(main["path"]), provider, moduli)


class BadValue(ValueError):
    """A target value that is neither a number nor a missing-value marker, or is infinite."""


def clean_value(value: Any, transform: str) -> float | None:
    """ALIGNN's missing-value rule (None, 'na', NaN -> None), then the target transform.

    Raises:
        BadValue: a non-numeric value (e.g. 'abc', a list, a bool) or an infinite one.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() == "na"):
        return None
    try:
        if isinstance(value, bool):
            raise TypeError("a boolean")
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise BadValue(f"non-numeric value {value!r}") from exc
    if math.isinf(number):
        raise BadValue(f"non-finite value {value!r}")
    if math.isnan(number):
        return None
    if transform == "log10":
        return math.log10(number) if number > 0 else None
    return number


def row_to_structure(row: dict[str, Any]):
    """A pymatgen Structure from a structures-table row (or a dict with the same keys)."""
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice(row["lattice"]), row["species"], row["frac_coords"], coords_are_cartesian=False)


def beyond_feature_table(species: list[str]) -> str | None:
    """Why elements of `species` cannot be featurised (Z above the atom-feature table), or None."""
    from pymatgen.core import Element

    heavy = sorted({(Element(str(el)).Z, str(el)) for el in species if Element(str(el)).Z > MAX_Z})
    if not heavy:
        return None
    names = ", ".join(f"{el} (Z={z})" for z, el in heavy)
    verb = "is" if len(heavy) == 1 else "are"
    return (f"element{'s' if len(heavy) > 1 else ''} {names} {verb} beyond the atom-feature table of the graph "
            f"models (Z <= {MAX_Z}, H to {Element.from_Z(MAX_Z).symbol})")


def validate(rec: RawRecord) -> str | None:
    """Why a record is not a sound structure, or None when it is."""
    from pymatgen.core import Element

    try:
        frac = np.asarray(rec.frac_coords, dtype=float)
        lattice = np.asarray(rec.lattice, dtype=float)
        if lattice.shape != (3, 3) or frac.ndim != 2 or frac.shape[1:] != (3,) or len(frac) == 0:
            return f"unparseable: lattice shape {lattice.shape}, coordinates shape {frac.shape}"
        if not (np.isfinite(frac).all() and np.isfinite(lattice).all()):
            return "NaN or infinite coordinates or lattice"
        if len(rec.species) != len(frac):
            return f"unparseable: {len(rec.species)} species for {len(frac)} sites"
        unknown = sorted({str(el) for el in rec.species if not Element.is_valid_symbol(str(el))})
        if unknown:
            return f"unknown element(s) {', '.join(unknown)}"
        beyond = beyond_feature_table(rec.species)
        if beyond:
            return beyond
        volume = abs(float(np.linalg.det(lattice)))  # a left-handed cell (negative determinant) is valid
        if volume < MIN_VOLUME:
            return f"degenerate cell: volume {volume:.4g} A^3 (lattice vectors (nearly) coplanar)"
        structure = row_to_structure({"lattice": lattice, "species": rec.species, "frac_coords": frac})
    except (ValueError, KeyError, TypeError) as exc:
        return f"unparseable: {type(exc).__name__}: {exc}"
    if len(structure) > 1:
        dmin = structure.distance_matrix[np.triu_indices(len(structure), 1)].min()
        if dmin < MIN_DISTANCE:
            return f"atoms closer than {MIN_DISTANCE} A (min distance {dmin:.3f} A)"
    return None


def _hash_key(material_id: str) -> str:
    return hashlib.sha256(material_id.encode()).hexdigest()


def select_subset(
    records: list[RawRecord], subset: dict[str, int] | None, stratify_fields: list[str], fields: list[str]
) -> list[RawRecord]:
    """Keep at least `subset[label]` records per official split label of every field in `stratify_fields`.

    Deterministic and stable: candidates are ranked once, records carrying more of the target `fields`
    first (so a small subset still gives every property a usable train/val/test set), ties broken by the
    smallest sha256(id). Labels are filled in the order val, test, train, and field by field; a record
    already kept counts towards every field whose label it carries, so the quotas share records. With one
    field this keeps the first `subset[label]` ranked records of each label (a duplicate labelled
    `train|test` counts as its first label, as in the splits). The snapshot order is
    preserved in the output; records without an official label of any stratify field are dropped.
    """
    if subset is None:
        return records

    def usable(value: Any) -> bool:
        try:
            return clean_value(value, "none") is not None
        except BadValue:
            return False

    def rank(rec: RawRecord) -> tuple[int, str]:
        return -sum(usable(rec.values.get(f)) for f in fields), _hash_key(rec.material_id)

    def label(rec: RawRecord, name: str) -> str | None:
        text = rec.splits.get(name)
        return text.split("|")[0] if text and usable(rec.values.get(name)) else None

    ranked = sorted(records, key=rank)
    chosen: set[str] = set()
    for wanted in ("val", "test", "train"):
        for name in stratify_fields:
            have = sum(1 for r in ranked if r.material_id in chosen and label(r, name) == wanted)
            for rec in ranked:
                if have >= subset.get(wanted, 0):
                    break
                if rec.material_id not in chosen and label(rec, name) == wanted:
                    chosen.add(rec.material_id)
                    have += 1
    return [r for r in records if r.material_id in chosen]


def _target_value(rec: RawRecord, spec: dict[str, Any], bad: list[dict[str, Any]]) -> float | None:
    """The cleaned value of one target; a bad one becomes null and is appended to `bad` (id, field, value)."""
    raw = rec.values.get(spec["field"])
    try:
        return clean_value(raw, spec.get("transform", "none"))
    except BadValue as exc:
        bad.append({"material_id": rec.material_id, "field": spec["field"], "value": repr(raw), "problem": str(exc)})
        return None


def _structure_rows(
    records: list[RawRecord], targets: dict[str, dict[str, Any]], bad: list[dict[str, Any]]
) -> pa.Table:
    """The structures table of `records`; target values that are not numbers are nulled and listed in `bad`."""
    from pymatgen.core import Composition

    columns: dict[str, list[Any]] = {k: [] for k in ("material_id", "formula", "natoms", "lattice", "species",
                                                     "frac_coords")}
    for name in targets:
        columns[name], columns[split_column(name)] = [], []
    for rec in records:
        columns["material_id"].append(rec.material_id)
        columns["formula"].append(Composition(_counts(rec.species)).reduced_formula)
        columns["natoms"].append(len(rec.species))
        columns["lattice"].append(np.asarray(rec.lattice, dtype=float).tolist())
        columns["species"].append(list(rec.species))
        columns["frac_coords"].append(np.asarray(rec.frac_coords, dtype=float).tolist())
        for name, spec in targets.items():
            columns[name].append(_target_value(rec, spec, bad))
            official = spec.get("split", "auto") != "random123"  # the source's own labels (official or auto)
            columns[split_column(name)].append(rec.splits.get(spec["field"]) if official else None)
    arrays = {k: pa.array(v, type=pa.float64() if k in targets else None) for k, v in columns.items()}
    for name in targets:
        arrays[split_column(name)] = pa.array(columns[split_column(name)], type=pa.string())
    return pa.table(arrays)


def _counts(species: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for el in species:
        counts[el] = counts.get(el, 0) + 1
    return counts


def _check_not_logged(table: pa.Table, targets: dict[str, dict[str, Any]]) -> None:
    for name, spec in targets.items():
        if spec.get("transform") != "log10":
            continue
        values = [v for v in table.column(name).to_pylist() if v is not None]
        if values and max(values) < math.log10(3.5):
            raise ValueError(f"target {name}: raw {spec['field']} values look already log10-transformed "
                             f"(all <= 3.5); set transform: none")


def check_fields(records: list[RawRecord], targets: dict[str, dict[str, Any]], snapshot: str) -> None:
    """Raise ValueError when a target reads a field the snapshot does not have (with the closest names)."""
    import difflib

    known = sorted({name for rec in records for name in rec.values})
    for name, spec in targets.items():
        if spec["field"] not in known:
            close = difflib.get_close_matches(spec["field"], known, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"{snapshot}: target {name!r} reads field {spec['field']!r}, which this snapshot does "
                             f"not have (fields: {known}){hint}")


def _log_bad_values(source: str, bad: list[dict[str, Any]], unreadable: list[RawRecord]) -> None:
    for rec in unreadable[:20]:
        log.warning("%s: rejected %s", source, rec.problem)
    if len(unreadable) > 20:
        log.warning("%s: %d entries were rejected before validation (all listed with their reason in the rejected "
                    "table)", source, len(unreadable))
    for item in bad[:20]:
        log.warning("%s: %s field %r: %s set to null", source, item["material_id"], item["field"], item["problem"])
    if bad:
        log.warning("%s: %d target values were not numbers and became null (all listed in the structures "
                    "metadata `bad_values`)", source, len(bad))


def _readable(records: list[RawRecord], source: str) -> tuple[list[RawRecord], list[RawRecord]]:
    """(readable records, unreadable ones); raises ValueError naming the first reason when none is readable."""
    unreadable = [r for r in records if r.problem]
    readable = [r for r in records if not r.problem]
    if unreadable and not readable:
        raise ValueError(f"{source}: all {len(unreadable)} entries were rejected, e.g. {unreadable[0].problem}; "
                         "nothing to ingest")
    return readable, unreadable


def _unlisted_meta(manifest: dict[str, Any]) -> dict[str, Any]:
    """A folder source's files that its id_prop table does not list (reported, never used); {} otherwise."""
    if "folder" not in manifest:
        return {}
    unlisted = manifest["folder"]["unlisted"]
    if unlisted:
        log.warning("%s: %d files in the folder are not in the id_prop table and were not used (e.g. %s)",
                    manifest["source"], len(unlisted), ", ".join(unlisted[:5]))
    return {"n_unlisted": len(unlisted), "unlisted": unlisted[:50]}


def ingest(
    manifest_path: Path,
    *,
    targets: dict[str, dict[str, Any]],
    subset: dict[str, int] | None,
    stratify_target: str,
    out: Path,
    rejected_out: Path,
) -> tuple[int, int]:
    """Build the structures and rejected tables of one source.

    Args:
        manifest_path: the `download` manifest.
        targets: target name -> {field, unit, transform, split} (config).
        subset: per-split counts of materials to keep, or None for all.
        stratify_target: target whose official split the subset is drawn within, or `all`: every target's
            official split gets the subset's counts (targets without official labels are skipped).
        out: structures Parquet.
        rejected_out: rejected Parquet (material_id, reason).

    Returns:
        (kept, rejected) row counts; kept + rejected equals the selected entries (`n_selected` in the metadata):
        the records a subset keeps plus the entries rejected before validation.

    Raises:
        ValueError: a target field the snapshot lacks, duplicate ids, or a changed snapshot file.
    """
    manifest = read_json(manifest_path)
    if stratify_target != ALL_TARGETS and stratify_target not in targets:
        raise ValueError(f"stratify_target {stratify_target!r} is not {ALL_TARGETS!r} or one of the targets "
                         f"{sorted(targets)}")
    records, unreadable = _readable(list(read_snapshot(manifest)), manifest["source"])
    n_input = len(records)
    dupes = n_input - len({r.material_id for r in records})
    if dupes:
        raise ValueError(f"snapshot has {dupes} duplicate material ids")
    check_fields(records, targets, manifest["files"]["structures"]["path"])
    fields = [spec["field"] for spec in targets.values()]
    stratify = [targets[t]["field"] for t in (targets if stratify_target == ALL_TARGETS else [stratify_target])]
    records = select_subset(records, subset, stratify, fields)
    good, bad = [], [(r.material_id, r.problem) for r in unreadable]
    for rec in tqdm(records, desc=f"validate {manifest['source']}", unit="structure", disable=None):
        reason = validate(rec)
        (bad.append((rec.material_id, reason)) if reason else good.append(rec))
    bad_values: list[dict[str, Any]] = []
    table = _structure_rows(good, targets, bad_values)
    _check_not_logged(table, targets)
    _log_bad_values(manifest["source"], bad_values, unreadable)
    n_entries, n_selected = n_input + len(unreadable), len(records) + len(unreadable)  # selected = kept + rejected
    meta = {"source": manifest["source"], "targets": list(targets), "snapshot_sha256": manifest["files"]
            ["structures"]["sha256"], "n_snapshot": n_entries, "n_selected": n_selected, "units":
            {k: v.get("unit", "") for k, v in targets.items()}, "n_rejected": len(bad), "bad_values": bad_values}
    meta.update(_unlisted_meta(manifest))
    params = {"targets": targets, "subset": subset, "stratify_target": stratify_target}
    write_parquet(table, out, kind="structures", params=params, extra=meta)
    rejected = pa.table({"material_id": [m for m, _ in bad], "reason": [r for _, r in bad]},
                        schema=pa.schema([("material_id", pa.string()), ("reason", pa.string())]))
    write_parquet(rejected, rejected_out, kind="rejected", params=params,
                  extra={"source": manifest["source"]})
    log.info("%s: %d entries, %d selected, %d kept, %d rejected", manifest["source"], n_entries, n_selected,
             len(good), len(bad))
    return len(good), len(bad)
