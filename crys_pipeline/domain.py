"""What a run was trained on, and how far a new crystal lies from it (the notes of `predict`).

`splits` records, per regime, what the training materials of a target span (`train_domain`): their
elements, the range of the target's values and of the volume per atom. The record travels in the split
file into the run's model.json (`split.train_domain`). `predict` notes a crystal outside it
(`domain_notes`): an element no training material has, a volume per atom outside the training range (an
isolated atom in a large box), and a negative prediction of a target whose training values are all >= 0
(a band gap, a modulus, a critical temperature: a quantity that cannot be negative).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def volume_per_atom(lattice: Any, natoms: int) -> float:
    """|det(lattice)| / natoms in cubic Angstrom (a left-handed cell has the same volume)."""
    return abs(float(np.linalg.det(np.asarray(lattice, dtype=float)))) / max(natoms, 1)


def train_domain(species: list[list[str]], lattices: list[Any], values: list[float]) -> dict[str, Any]:
    """The span of the training materials: sorted elements, [min, max] of the target and of the volume per atom.

    Args:
        species: element symbols of each training material's sites.
        lattices: each material's [3, 3] lattice (rows are lattice vectors, Angstrom).
        values: each material's target value.
    """
    if not values:
        return {}
    volumes = [volume_per_atom(lat, len(sp)) for sp, lat in zip(species, lattices, strict=True)]
    return {"elements": sorted({el for sp in species for el in sp}),
            "target_range": [float(min(values)), float(max(values))],
            "volume_per_atom_range": [round(min(volumes), 3), round(max(volumes), 3)]}


def domain_notes(elements: set[str], volume: float, prediction: float | None, domain: dict[str, Any],
                 target: str) -> list[str]:
    """Why a crystal's prediction deserves caution (empty when it lies inside the training domain).

    Args:
        elements: the crystal's element symbols.
        volume: its volume per atom (cubic Angstrom).
        prediction: the (mean) prediction, or None.
        domain: `train_domain` of the run's training split ({} when the run records none).
        target: the target's name, for the messages.
    """
    notes = []
    unseen = sorted(elements - set(domain.get("elements", elements)))
    if unseen:
        notes.append(f"far from the training data: element{'s' if len(unseen) > 1 else ''} {', '.join(unseen)} "
                     "in no training material")
    low, high = domain.get("volume_per_atom_range", (volume, volume))
    if not low <= volume <= high:
        notes.append(f"far from the training data: volume per atom {volume:.4g} A^3 outside the training range "
                     f"{low:.4g}-{high:.4g} A^3")
    target_low = domain.get("target_range", (None,))[0]
    if prediction is not None and prediction < 0 and target_low is not None and target_low >= 0:
        notes.append(f"negative prediction of {target}, whose training values are all >= 0 (min {target_low:.4g}): "
                     "not physical, treat as unreliable")
    return notes
