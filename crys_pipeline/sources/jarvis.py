"""Providers `jarvis` and `mp`: the JARVIS-tools releases of JARVIS-DFT and of Materials Project 2018.

Both come as the offline JSON-lines files of ../shared/data or as the JARVIS figshare zip (`dft_3d_2021`,
`megnet`; MP's elastic moduli from mp-api beside it). The readers map each entry to a `RawRecord` with the
canonical field names and the official split labels (the record's own, or those of the installed
jarvis-leaderboard benchmarks). An entry that cannot be read (bad JSON, no id) becomes an unreadable record
named `file:line` (or `file[index]`), which `ingest` rejects with its reason.
"""

from __future__ import annotations

import gzip
import json
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from crys_pipeline.sources.records import SPLIT_LABELS, RawRecord, unreadable

#: jarvis-leaderboard benchmark files holding the official split of each canonical field.
LEADERBOARD_BENCHMARKS = {
    "formation_energy_peratom": "dft_3d_formation_energy_peratom",
    "optb88vdw_bandgap": "dft_3d_optb88vdw_bandgap",
    "mbj_bandgap": "dft_3d_mbj_bandgap",
    "optb88vdw_total_energy": "dft_3d_optb88vdw_total_energy",
    "bulk_modulus_kv": "dft_3d_bulk_modulus_kv",
    "shear_modulus_gv": "dft_3d_shear_modulus_gv",
    "e_form": "megnet_e_form",
    "gap_pbe": "megnet_gappbe",
}
JARVIS_FIELDS = tuple(k for k, v in LEADERBOARD_BENCHMARKS.items() if v.startswith("dft_3d"))


def _open_text(path: Path):
    with open(path, "rb") as probe:
        magic = probe.read(2)
    return gzip.open(path, "rt") if magic == b"\x1f\x8b" else open(path)


def _named_lines(path: Path, handle: Any) -> Iterator[str]:
    """The lines of an open snapshot; a truncated or damaged gzip stream is an error naming the file and line."""
    number = 0
    try:
        for line in handle:
            number += 1
            yield line
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ValueError(f"{path}: truncated or damaged after line {number} ({type(exc).__name__}: {exc}); replace "
                         "it with a complete copy and rerun download") from exc


def offline_records(path: Path, provider: str) -> Iterator[RawRecord]:
    """The records of an offline JSON-lines snapshot (gzipped or not), each with its own official split labels."""
    id_key = "jid" if provider == "jarvis" else "material_id"
    with _open_text(path) as handle:
        for number, line in enumerate(_named_lines(path, handle), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as exc:
                yield unreadable(f"{path}:{number}", f"unparseable JSON ({exc})")
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get(id_key), str) or not rec[id_key]:
                yield unreadable(f"{path}:{number}", f"no {id_key!r} id field")
                continue
            if provider == "jarvis":
                yield RawRecord(
                    rec["jid"], rec.get("lattice_mat"), rec.get("species"), rec.get("frac_coords"),
                    {f: rec.get(f) for f in JARVIS_FIELDS}, dict(rec.get("split") or {}),
                )
            else:
                split = rec.get("split_megnet_2018")
                yield RawRecord(
                    rec["material_id"], rec.get("lattice_mat"), rec.get("species"), rec.get("frac_coords"),
                    {"e_form": rec.get("e_form_mp2018"), "gap_pbe": rec.get("gap_pbe_mp2018"),
                     "K_VRH": rec.get("K_VRH"), "G_VRH": rec.get("G_VRH")},
                    {"e_form": split, "gap_pbe": split},
                )


def leaderboard_splits(fields: list[str]) -> dict[str, dict[str, str]]:
    """Official {field: {id: split label}} from the installed jarvis-leaderboard package."""
    from importlib.resources import files

    root = files("jarvis_leaderboard") / "benchmarks" / "AI" / "SinglePropertyPrediction"
    out: dict[str, dict[str, str]] = {}
    for name in fields:
        bench = LEADERBOARD_BENCHMARKS.get(name)
        if bench is None:
            continue
        with zipfile.ZipFile(str(root / f"{bench}.json.zip")) as zf:
            data = json.loads(zf.read(f"{bench}.json"))
        labels: dict[str, str] = {}
        for label in SPLIT_LABELS:
            for mid in data.get(label, {}):
                labels[mid] = f"{labels[mid]}|{label}" if mid in labels else label
        out[name] = labels
    return out


def figshare_records(path: Path, provider: str, moduli: dict[str, dict[str, Any]]) -> Iterator[RawRecord]:
    """The records of a figshare zip; official labels from jarvis-leaderboard, MP moduli from `moduli` by id."""
    with zipfile.ZipFile(path) as zf:
        data = json.loads(zf.read(zf.namelist()[0]))
    id_key = "jid" if provider == "jarvis" else "id"
    fields = list(JARVIS_FIELDS) if provider == "jarvis" else ["e_form", "gap_pbe"]
    official = leaderboard_splits(fields)
    for index, rec in enumerate(data):
        if rec.get(id_key) in (None, ""):
            yield unreadable(f"{path}[{index}]", f"no {id_key!r} id field")
            continue
        atoms = rec.get("atoms") or {}
        coords = np.asarray(atoms.get("coords"), dtype=float)
        lattice = np.asarray(atoms.get("lattice_mat"), dtype=float)
        frac = np.linalg.solve(lattice.T, coords.T).T if atoms.get("cartesian") else coords
        mid = str(rec[id_key])
        values = {f: rec.get(f) for f in JARVIS_FIELDS} if provider == "jarvis" else {
            "e_form": rec.get("e_form"), "gap_pbe": rec.get("gap pbe"), **moduli.get(mid, {})}
        yield RawRecord(mid, lattice.tolist(), atoms.get("elements"), frac.tolist(), values,
                        {f: official[f].get(mid) for f in official})
