"""Settings of the describe stage: the one dataclass of its parameters and the fixed robocrys settings.

Light on purpose (no robocrys, no pymatgen): everything here is stamped in the artifact's params.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

#: robocrys' default symmetry tolerance (first attempt).
SYMPREC = 0.01
#: StructureCondenser settings (robocrys' defaults, docs/method.md §3.1), stamped in the metadata.
CONDENSER_KWARGS: dict[str, Any] = {
    "use_conventional_cell": True, "use_symmetry_equivalent_sites": False, "simplify_molecules": True,
    "use_iupac_formula": True, "use_common_formulas": True,
}
#: String hash seed of the worker processes (robocrys' word order within some sentences follows it).
PYTHON_HASH_SEED = "0"
#: How molecules are named: never online; stamped in the metadata.
MOLECULE_NAMING: dict[str, Any] = {"use_online_pubchem": False}


@dataclass(frozen=True)
class DescribeSettings:
    """Parameters of the describe stage (all recorded in the artifact's params).

    Attributes:
        fmt: robocrys text format, "raw" (Python API default) or "unicode" (robocrys CLI default).
        timeout_s: per-structure wall-clock limit in seconds.
        symprec: symmetry tolerance of the first attempt (robocrys default 0.01).
        symprec_retry: looser symprec tried once when condensation fails; None disables the retry.
        plain_orientation: write component orientations as plain integers, "(0, 0, 1)", as robocrys
            does with numpy < 2; with numpy >= 2 stock robocrys prints "(np.int64(0), np.int64(0),
            np.int64(1))". False reproduces stock robocrys byte for byte (the benchmark's setting).
    """

    fmt: str = "raw"
    timeout_s: float = 120.0
    symprec: float = SYMPREC
    symprec_retry: float | None = 0.1
    plain_orientation: bool = True

    def params(self) -> dict[str, Any]:
        """The settings plus the fixed robocrys settings, as artifact params."""
        return {**asdict(self), "condenser": CONDENSER_KWARGS, "molecule_naming": MOLECULE_NAMING,
                "python_hash_seed": PYTHON_HASH_SEED}
