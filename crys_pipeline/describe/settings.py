"""The fixed robocrys settings of the describe stage and the params it stamps.

Its `DescribeSettings`, the user-facing ones, live in crys_pipeline.settings.

Light on purpose (no robocrys, no pymatgen): everything here is stamped in the artifact's params.
"""

from __future__ import annotations

from typing import Any

from crys_pipeline.settings import DescribeSettings, stamp

#: StructureCondenser settings (robocrys' defaults, docs/method.md §3.1), stamped in the metadata.
CONDENSER_KWARGS: dict[str, Any] = {
    "use_conventional_cell": True, "use_symmetry_equivalent_sites": False, "simplify_molecules": True,
    "use_iupac_formula": True, "use_common_formulas": True,
}
#: String hash seed of the worker processes (robocrys' word order within some sentences follows it).
PYTHON_HASH_SEED = "0"
#: How molecules are named: never online; stamped in the metadata.
MOLECULE_NAMING: dict[str, Any] = {"use_online_pubchem": False}


def describe_params(settings: DescribeSettings) -> dict[str, Any]:
    """The stage's settings plus the fixed robocrys settings, as artifact params."""
    return {**stamp(settings), "condenser": CONDENSER_KWARGS, "molecule_naming": MOLECULE_NAMING,
            "python_hash_seed": PYTHON_HASH_SEED}
