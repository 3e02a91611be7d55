"""robocrys on one structure, as robocrys' command-line pipeline runs it, inside a describe worker.

Each structure goes through the same steps as `robocrys.cli.robocrystallographer`: oxidation states
guessed with `add_oxidation_state_by_guess(max_sites=-80)` when the structure has none (a failure to
guess is not an error), then `StructureCondenser().condense_structure` and
`StructureDescriber().describe` with robocrys' default settings, the text format (`raw` or
`unicode`) being a recorded choice. The describer runs once with `return_parts=True`; the full text
is the space-join of the non-empty parts, which is byte-for-byte what `describe()` returns without
parts. An exception becomes a `failed` row; a condensation failure is retried once with a looser
symprec first.

`start_worker` is what a describe worker process runs before its first structure.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

from pymatgen.core import Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer
from robocrys import StructureCondenser, StructureDescriber

from crys_pipeline.describe.fast import FastMineralMatcher, forget_fingerprints, install_worker_patches
from crys_pipeline.describe.settings import CONDENSER_KWARGS, PYTHON_HASH_SEED
from crys_pipeline.schemas import STATUS_FAILED, STATUS_OK
from crys_pipeline.settings import DescribeSettings

log = logging.getLogger(__name__)

#: The three description parts robocrys returns, in the order they are joined.
PARTS = ("mineral", "component_makeup", "components")


def _guess_oxidation_states(structure: Structure) -> bool:
    """Add guessed oxidation states in place exactly as robocrys' CLI does; False when it cannot."""
    if any(hasattr(el, "oxi_state") for el in structure.composition.elements):
        return True
    try:
        structure.add_oxidation_state_by_guess(max_sites=-80)
    except ValueError:
        return False
    return True


def _plain_orientations(condensed: dict[str, Any]) -> None:
    """Component orientations (Miller indices / directions) as tuples of Python ints, in place."""
    for component in condensed["components"].values():
        if component.get("orientation") is not None:
            component["orientation"] = tuple(int(v) for v in component["orientation"])


class CondenseError(RuntimeError):
    """Condensation failed at both the default and the looser symprec."""


class RobocrysEngine:
    """Condenser + describer built once; `describe` runs robocrys' pipeline on one structure."""

    def __init__(self, settings: DescribeSettings) -> None:
        self.settings = settings
        self.matcher = FastMineralMatcher()
        self.describer = StructureDescriber(fmt=settings.fmt, return_parts=True)

    def _condenser(self, symprec: float) -> StructureCondenser:
        return StructureCondenser(mineral_matcher=self.matcher, symprec=symprec, **CONDENSER_KWARGS)

    def _condense(self, structure: Structure) -> tuple[dict[str, Any], float]:
        """Condensed dict and the symprec that worked (the looser one after a failure)."""
        self.matcher.reset()
        try:
            return self._condenser(self.settings.symprec).condense_structure(structure), self.settings.symprec
        except Exception as first:  # any condensation failure earns the retry
            retry = self.settings.symprec_retry
            if retry is None or retry == self.settings.symprec:
                raise
            log.info("condensing failed at symprec=%s (%s: %s); retrying at %s",
                     self.settings.symprec, type(first).__name__, first, retry)
            self.matcher.reset()
            try:
                return self._condenser(retry).condense_structure(structure), retry
            except Exception as second:  # reported with both attempts
                raise CondenseError(f"{type(second).__name__}: {second} (symprec {retry}); at symprec "
                                    f"{self.settings.symprec}: {type(first).__name__}: {first}") from second

    def describe(self, structure: Structure) -> dict[str, Any]:
        """The robocrys description of one structure: parts, full text, symmetry and dimensionality."""
        if not structure.is_ordered:
            raise ValueError("disordered structure (partial occupancies): robocrys describes ordered structures only")
        forget_fingerprints()
        structure = structure.copy()
        oxidation = _guess_oxidation_states(structure)
        condensed, symprec = self._condense(structure)
        if self.settings.plain_orientation:
            _plain_orientations(condensed)
        parts = self.describer.describe(condensed)
        return {
            **{part: parts[part] for part in PARTS},
            "description": " ".join(parts[part] for part in PARTS if parts[part] != ""),
            "formula": condensed["formula"],
            "spg_symbol": condensed["spg_symbol"],
            "spg_number": SpacegroupAnalyzer(structure, symprec=symprec).get_space_group_number(),
            "crystal_system": condensed["crystal_system"],
            "dimensionality": int(condensed["dimensionality"]),
            "symprec": symprec,
            "oxidation_states": oxidation,
        }

    def describe_row(self, material_id: str, structure: Structure) -> dict[str, Any]:
        """One output row: `describe` or the exception that stopped it, plus the elapsed time."""
        start, cpu = time.perf_counter(), time.process_time()
        row = empty_row(material_id, status=STATUS_OK)
        try:
            row.update(self.describe(structure))
        except Exception as exc:  # every failure becomes a row
            row.update(status=STATUS_FAILED, error=f"{type(exc).__name__}: {exc}")
        row["elapsed_s"] = round(time.perf_counter() - start, 3)
        row["cpu_s"] = round(time.process_time() - cpu, 3)
        return row


def empty_row(material_id: str, *, status: str, error: str = "", elapsed_s: float = 0.0) -> dict[str, Any]:
    """A descriptions row with empty texts and null symmetry (failures and timeouts)."""
    return {
        "material_id": material_id, "status": status, "error": error, "elapsed_s": elapsed_s, "cpu_s": None,
        **{part: "" for part in PARTS}, "description": "", "formula": "", "spg_symbol": None,
        "spg_number": None, "crystal_system": None, "dimensionality": None, "symprec": None,
        "oxidation_states": None,
    }



def start_worker(settings: DescribeSettings) -> Callable[[str, Structure], dict[str, Any]]:
    """Prepare a worker process and build its engine; returns the per-structure `describe_row`.

    Installs the fast path's patches, silences warnings and refuses to run without the fixed
    string hash seed (robocrys' word order depends on it).
    """
    warnings.filterwarnings("ignore")
    install_worker_patches()
    if os.environ.get("PYTHONHASHSEED") != PYTHON_HASH_SEED or sys.flags.hash_randomization:
        raise RuntimeError("worker started without PYTHONHASHSEED=0 (a forkserver started elsewhere?)")
    return RobocrysEngine(settings).describe_row
