"""The robocrys fast path: speed-ups around robocrys and pymatgen, each keeping the text byte-identical.

Checked by `bench/bench_describe.py` and tests/test_describe.py:

* the condenser, describer and AFLOW mineral table are built once per worker, not per structure
  (`RobocrysEngine` in `crys_pipeline.describe.engine`);
* `FastMineralMatcher` / `PrefilteredPrototypeMatcher` replace robocrys' AFLOW prototype matching:
  prototypes that `StructureMatcher.fit_anonymous` must reject (different number of species,
  different anonymised reduced composition, different primitive site count) are skipped, and the
  Niggli/primitive reductions that `fit_anonymous` would recompute (behind an LRU cache whose key
  comparisons are O(N^2) structure equalities) are computed once per prototype and per query;
* `OfflineMoleculeNamer` never queries PubChem and reads robocrys' molecule database once per
  worker, on first use, instead of once per structure;
* the CrystalNN site fingerprints robocrys computes twice per structure (mineral fingerprint and
  site geometries, same settings, same structure) are computed once (`_memo_featurize`).

The two monkeypatches this needs live in `install_worker_patches` and are applied only inside the
worker processes.
"""

from __future__ import annotations

import warnings
from typing import Any

from matminer.featurizers.site.fingerprint import CrystalNNFingerprint
from pymatgen.analysis.structure_matcher import SiteOrderedIStructure, StructureMatcher
from pymatgen.core import Structure
from robocrys.condense import condenser as robocrys_condenser
from robocrys.condense.mineral import MineralMatcher, ReducedAflowPrototypeMatcher, _get_row_data
from robocrys.condense.molecule import MoleculeNamer


def _reduce_for_matching(structure: Structure) -> Structure:
    """The Niggli + primitive reduction `StructureMatcher.fit_anonymous` applies to its inputs.

    Same calls and order as `_process_species` + `_preprocess` (primitive_cell=True, niggli=True),
    bypassing only the LRU cache around `_get_reduced_istructure`.
    """
    reduce = StructureMatcher._get_reduced_istructure.__wrapped__
    copied = Structure.from_sites(structure)
    return Structure.from_sites(reduce(SiteOrderedIStructure.from_sites(copied), True, True))


def _anonymous_key(structure: Structure) -> tuple[int, tuple[float, ...] | None]:
    """Invariants `fit_anonymous` requires to be equal: (species count, sorted reduced amounts).

    The amounts are None (not compared) when two species share an element (mixed valence) or an
    amount is fractional, since StructureMatcher's composition hash then sums or rounds them.
    """
    comp = structure.composition
    amounts = list(comp.values())
    symbols = {getattr(sp, "symbol", str(sp)) for sp in comp}
    if len(symbols) < len(comp) or any(abs(a - round(a)) > 1e-8 for a in amounts):
        return len(comp), None
    reduced, _ = comp.get_reduced_composition_and_factor()
    return len(comp), tuple(sorted(reduced.values()))


class PrefilteredPrototypeMatcher(ReducedAflowPrototypeMatcher):
    """robocrys' `ReducedAflowPrototypeMatcher` that only fits prototypes which could match.

    `fit_anonymous(prototype, query)` (no supercell, no subset) returns False unless both have the
    same number of species, a species permutation maps one reduced composition onto the other and
    the reduced cells have the same number of sites; those prototypes are skipped. The others are
    fitted in robocrys' order on reductions computed once, so the matches and their order equal
    robocrys'.
    """

    def __init__(self, owner: FastMineralMatcher) -> None:
        super().__init__(owner.initial_ltol, owner.initial_stol, owner.initial_angle_tol, owner._mineral_db)
        self._owner = owner
        self._query: tuple[Structure, Structure, tuple] | None = None

    def _reduced_query(self, s: Structure) -> tuple[Structure, tuple]:
        if self._query is None or self._query[0] is not s:
            self._query = (s, _reduce_for_matching(s), _anonymous_key(s))
        return self._query[1], self._query[2]

    def _match_prototype(self, structure_matcher: StructureMatcher, s: Structure) -> list[dict[str, Any]]:
        """Prototype rows (robocrys' order: by fingerprint distance) that `s` fits anonymously."""
        s_red, (n_species, amounts) = self._reduced_query(s)
        tags = []
        for pos, prototype in enumerate(self._mineral_db["structure"]):
            p_species, p_amounts = self._owner.prototype_key(prototype)
            if p_species != n_species or (amounts is not None and p_amounts != amounts):
                continue
            p_red = self._owner.reduced_prototype(prototype)
            if len(p_red) != len(s_red):
                continue
            if structure_matcher.fit_anonymous(p_red, s_red, skip_structure_reduction=True):
                tags.append(_get_row_data(self._mineral_db.iloc[pos]))
        return tags


class FastMineralMatcher(MineralMatcher):
    """robocrys' `MineralMatcher`, built once per worker, with prefiltered AFLOW matching.

    Differences from the stock class, none of which changes a result:
    the fingerprint-distance cache is checked by identity before equality (the stock `==` on a
    structure with itself is an O(N^2) site comparison) and is cleared by `reset()` before every
    structure (the stock matcher is new for every structure); reduced prototypes are cached.
    """

    def __init__(self) -> None:
        super().__init__()
        self._keys = {id(p): _anonymous_key(p) for p in self.mineral_db["structure"]}
        self._reduced: dict[int, Structure] = {}

    def reset(self) -> None:
        """Forget the previous structure, as a freshly built stock matcher would."""
        self._structure = None
        self._mineral_db = None

    def prototype_key(self, prototype: Structure) -> tuple[int, tuple[float, ...] | None]:
        """`_anonymous_key` of a mineral-table prototype (precomputed)."""
        return self._keys[id(prototype)]

    def reduced_prototype(self, prototype: Structure) -> Structure:
        """Matching reduction of a mineral-table prototype, computed on first need."""
        if id(prototype) not in self._reduced:
            self._reduced[id(prototype)] = _reduce_for_matching(prototype)
        return self._reduced[id(prototype)]

    def _set_distance_matrix(self, structure: Structure) -> None:
        if self._mineral_db is not None and self._structure is structure:
            return
        super()._set_distance_matrix(structure)

    def get_aflow_matches(self, structure: Structure) -> list[dict[str, Any]] | None:
        """AFLOW prototype matches, as robocrys' `get_aflow_matches`, with prefiltering."""
        self._set_distance_matrix(structure)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            matcher = PrefilteredPrototypeMatcher(self)
        return matcher.get_prototypes(structure)


_MOLECULE_DB: dict[str, dict[str, str]] = {}


class OfflineMoleculeNamer(MoleculeNamer):
    """robocrys' `MoleculeNamer` with PubChem disabled and its database read once per process.

    The stock class reads `molecule_db.json.gz` (145k molecules) in its constructor, and the
    condenser builds a new namer for every structure. Here the table is read on first lookup and
    kept for the process. Names come only from that table (SMILES need openbabel).
    """

    def __init__(self) -> None:
        """Like the stock constructor, minus the database read."""
        self.matched_molecules: dict[str, str] = {}
        self.use_online_pubchem = False
        self.name_preference = tuple(list(self.name_sources) + list(self.name_sources))

    @property
    def molecule_db(self) -> dict[str, dict[str, str]]:  # type: ignore[override]
        """The robocrys molecule table, read once per process."""
        if not _MOLECULE_DB:
            from importlib.resources import files

            from monty.serialization import loadfn

            _MOLECULE_DB.update(loadfn(str(files("robocrys.condense") / "molecule_db.json.gz")))
        return _MOLECULE_DB


#: CrystalNNFingerprint results of the structure being described: (featurizer, structure, site) -> values.
_FINGERPRINTS: dict[tuple[str, bytes, bytes, tuple[str, ...], int], list[Any]] = {}
_ORIGINAL_FEATURIZE: list[Any] = []


def _featurizer_key(featurizer: CrystalNNFingerprint) -> str:
    return repr((featurizer.op_types, featurizer.chem_info, sorted(vars(featurizer.cnn).items())))


def _memo_featurize(featurizer: CrystalNNFingerprint, struct: Structure, idx: int) -> list[Any]:
    """`CrystalNNFingerprint.featurize`, computed once per (settings, exact structure content, site).

    robocrys fingerprints the same condensed structure twice with identical settings: for mineral
    matching (`get_structure_fingerprint`) and for site geometries (`get_site_fingerprints`).
    The key holds the exact lattice, fractional coordinates and species (with oxidation states).
    """
    key = (_featurizer_key(featurizer), struct.lattice.matrix.tobytes(), struct.frac_coords.tobytes(),
           tuple(site.species_string for site in struct), idx)
    if key not in _FINGERPRINTS:
        _FINGERPRINTS[key] = list(_ORIGINAL_FEATURIZE[0](featurizer, struct, idx))
    return list(_FINGERPRINTS[key])


def forget_fingerprints() -> None:
    """Empty the fingerprint memo (before every structure: the memo holds one structure's sites)."""
    _FINGERPRINTS.clear()


def install_worker_patches() -> None:
    """The package's only monkeypatches, applied inside describe worker processes only.

    * `StructureCondenser._condense_components` instantiates `MoleculeNamer()` with its default
      `use_online_pubchem=True`; swapping the name in robocrys' condenser module for
      `OfflineMoleculeNamer` is the only way to turn the network lookup off.
    * `CrystalNNFingerprint.featurize` gets `_memo_featurize`'s exact-input memo (cleared for every
      structure by `RobocrysEngine.describe`).
    """
    robocrys_condenser.MoleculeNamer = OfflineMoleculeNamer  # type: ignore[misc]
    if not _ORIGINAL_FEATURIZE:
        _ORIGINAL_FEATURIZE.append(CrystalNNFingerprint.featurize)
        CrystalNNFingerprint.featurize = _memo_featurize  # type: ignore[method-assign]
