"""Write an ALIGNN-style example folder from the offline JARVIS-DFT snapshot.

The folder holds real JARVIS-DFT 2021.8.18 structures (../shared/data, see PROVENANCE.md), half as
POSCAR files (`<jid>.vasp`) and half as CIF files (`<jid>.cif`), and a headerless `id_prop.csv` of
`filename,formation_energy_peratom` rows (eV/atom), exactly what `train_alignn.py --root_dir` reads.
The structures are chosen deterministically: small cells (at most `--max-atoms` sites) with a
formation energy, ordered by sha256 of the JARVIS id, so the same command always writes the same folder.

    python examples/make_example_folder.py                       # -> examples/my_crystals (36 structures)
    python examples/make_example_folder.py --count 24 --out DIR
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("make_example_folder")

REPO = Path(__file__).resolve().parent.parent
SNAPSHOT = REPO.parent / "shared" / "data" / "jarvis_dft3d_2021_structures.jsonl.gz"
TARGET = "formation_energy_peratom"


def _records(snapshot: Path, max_atoms: int) -> Iterator[dict[str, Any]]:
    """Snapshot records with a finite formation energy and at most `max_atoms` sites."""
    with gzip.open(snapshot, "rt") as handle:
        for line in handle:
            rec = json.loads(line)
            value = rec.get(TARGET)
            if isinstance(value, (int, float)) and math.isfinite(value) and len(rec["species"]) <= max_atoms:
                yield rec


def _structure(rec: dict[str, Any]):
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice(rec["lattice_mat"]), rec["species"], rec["frac_coords"])


def make_folder(snapshot: Path, out: Path, count: int, max_atoms: int) -> list[tuple[str, float]]:
    """Write `count` structure files and id_prop.csv into `out`; returns the (filename, target) rows."""
    from pymatgen.io.cif import CifWriter

    chosen = sorted(_records(snapshot, max_atoms), key=lambda r: hashlib.sha256(r["jid"].encode()).hexdigest())
    if len(chosen) < count:
        raise ValueError(f"{snapshot}: only {len(chosen)} structures with <= {max_atoms} atoms and a {TARGET}")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, rec in enumerate(chosen[:count]):
        structure = _structure(rec)
        if index % 2:
            name = f"{rec['jid']}.cif"
            CifWriter(structure).write_file(out / name)
        else:
            name = f"{rec['jid']}.vasp"
            structure.to(filename=str(out / name), fmt="poscar")
        rows.append((name, rec[TARGET]))
    with open(out / "id_prop.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    log.info("wrote %d structures (%d POSCAR, %d CIF) and %s", count, (count + 1) // 2, count // 2,
             out / "id_prop.csv")
    return rows


def main() -> None:
    """Command line entry point: write the example folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshot", type=Path, default=SNAPSHOT, help="offline JARVIS-DFT JSON-lines snapshot")
    parser.add_argument("--out", type=Path, default=REPO / "examples" / "my_crystals", help="folder to write")
    parser.add_argument("--count", type=int, default=36, help="number of structures")
    parser.add_argument("--max-atoms", type=int, default=8, help="largest cell kept (sites)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    make_folder(args.snapshot, args.out, args.count, args.max_atoms)


if __name__ == "__main__":
    main()
