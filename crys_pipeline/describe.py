"""Stage `describe`: Robocrystallographer text descriptions of crystal structures (docs/method.md §3.1).

Each structure goes through the same steps as robocrys' command-line pipeline
(`robocrys.cli.robocrystallographer`): oxidation states guessed with
`add_oxidation_state_by_guess(max_sites=-80)` when the structure has none (a failure to guess is
not an error), then `StructureCondenser().condense_structure` and `StructureDescriber().describe`
with robocrys' default settings, the text format (`raw` or `unicode`) being a recorded choice.
The describer runs once with `return_parts=True`; the full text is the space-join of the non-empty
parts, which is byte-for-byte what `describe()` returns without parts.

Structures are described in persistent worker processes (`DescribePool`), started with
PYTHONHASHSEED=0 (forked from a forkserver that has the imports done): robocrys orders some words by iterating Python sets of strings ("a mixture of
corner and edge-sharing" vs "edge and corner-sharing"), so stock robocrys' text changes from one
process to the next; the fixed seed makes ours reproducible (it equals stock robocrys run with
PYTHONHASHSEED=0). Each structure gets a
wall-clock limit; a worker past it is killed, the row is recorded as `timeout` and a fresh worker
takes its place. An exception becomes a `failed` row; a condensation failure is retried once with a
looser symprec first. Every input id comes out exactly once.

Speed-ups inside the workers (every one keeps robocrys' output byte-identical; checked by
`bench/bench_describe.py` and tests/test_describe.py):

* the condenser, describer and AFLOW mineral table are built once per worker, not per structure;
* `FastMineralMatcher` / `PrefilteredPrototypeMatcher` replace robocrys' AFLOW prototype matching:
  prototypes that `StructureMatcher.fit_anonymous` must reject (different number of species,
  different anonymised reduced composition, different primitive site count) are skipped, and the
  Niggli/primitive reductions that `fit_anonymous` would recompute (behind an LRU cache whose key
  comparisons are O(N^2) structure equalities) are computed once per prototype and per query;
* `OfflineMoleculeNamer` never queries PubChem and reads robocrys' molecule database once per
  worker, on first use, instead of once per structure;
* the CrystalNN site fingerprints robocrys computes twice per structure (mineral fingerprint and
  site geometries, same settings, same structure) are computed once (`_memo_featurize`).

The two monkeypatches this needs live in `_install_worker_patches` and are applied only inside the
worker processes.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import re
import signal
import sys
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Self

import pyarrow as pa
from matminer.featurizers.site.fingerprint import CrystalNNFingerprint
from pymatgen.analysis.structure_matcher import SiteOrderedIStructure, StructureMatcher
from pymatgen.core import Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer
from robocrys import StructureCondenser, StructureDescriber
from robocrys.condense import condenser as robocrys_condenser
from robocrys.condense.mineral import MineralMatcher, ReducedAflowPrototypeMatcher, _get_row_data
from robocrys.condense.molecule import MoleculeNamer
from tqdm import tqdm

from crys_pipeline.io import read_meta, read_parquet, sha256_file, write_parquet
from crys_pipeline.schemas import DESCRIPTIONS, STATUS_FAILED, STATUS_OK, STATUS_TIMEOUT

log = logging.getLogger(__name__)

#: The three description parts robocrys returns, in the order they are joined.
PARTS = ("mineral", "component_makeup", "components")
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
_SHARD = re.compile(r"^(\d+)-of-(\d+)$")


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


def tool_versions() -> dict[str, str]:
    """Versions of the libraries that shape the text (stamped in every descriptions file)."""
    out = {}
    for name in ("robocrys", "pymatgen", "spglib", "matminer", "numpy", "scipy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


# --- robocrys fast path ---------------------------------------------------------------------------
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
        """robocrys' molecule table, read once per process."""
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


def _install_worker_patches() -> None:
    """The module's only monkeypatches, applied inside describe worker processes only.

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


# --- one structure --------------------------------------------------------------------------------
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
        """robocrys description of one structure: parts, full text, symmetry and dimensionality."""
        if not structure.is_ordered:
            raise ValueError("disordered structure (partial occupancies): robocrys describes ordered structures only")
        _FINGERPRINTS.clear()
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
        row = empty_row(material_id, STATUS_OK)
        try:
            row.update(self.describe(structure))
        except Exception as exc:  # noqa: BLE001 - every failure becomes a row
            row.update(status=STATUS_FAILED, error=f"{type(exc).__name__}: {exc}")
        row["elapsed_s"] = round(time.perf_counter() - start, 3)
        row["cpu_s"] = round(time.process_time() - cpu, 3)
        return row


def empty_row(material_id: str, status: str, error: str = "", elapsed_s: float = 0.0) -> dict[str, Any]:
    """A descriptions row with empty texts and null symmetry (failures and timeouts)."""
    return {
        "material_id": material_id, "status": status, "error": error, "elapsed_s": elapsed_s, "cpu_s": None,
        **{part: "" for part in PARTS}, "description": "", "formula": "", "spg_symbol": None,
        "spg_number": None, "crystal_system": None, "dimensionality": None, "symprec": None,
        "oxidation_states": None,
    }


# --- worker pool ----------------------------------------------------------------------------------
def _worker_main(conn: Connection, settings: DescribeSettings) -> None:
    """Worker process: build the engine once, then describe (position, id, structure) tasks."""
    from crys_pipeline.lifecycle import die_with_parent

    die_with_parent()  # the forkserver, which ends with the stage process
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    warnings.filterwarnings("ignore")
    _install_worker_patches()
    try:
        if os.environ.get("PYTHONHASHSEED") != PYTHON_HASH_SEED or sys.flags.hash_randomization:
            raise RuntimeError("worker started without PYTHONHASHSEED=0 (a forkserver started elsewhere?)")
        engine = RobocrysEngine(settings)
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        conn.send(("init_error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        position, material_id, structure = task
        conn.send((position, engine.describe_row(material_id, structure)))


@contextmanager
def _fixed_hash_seed() -> Iterator[None]:
    """Start processes with PYTHONHASHSEED=PYTHON_HASH_SEED (os.environ restored afterwards).

    The first start launches the forkserver (a fresh interpreter that preloads this module); it and
    every worker forked from it keep the seed.

    robocrys joins Python sets of strings ("a mixture of corner and edge-sharing octahedra"), whose
    iteration order follows the per-process string hash seed; a fixed seed makes the text reproducible.
    """
    previous = os.environ.get("PYTHONHASHSEED")
    os.environ["PYTHONHASHSEED"] = PYTHON_HASH_SEED
    try:
        yield
    finally:
        if previous is None:
            del os.environ["PYTHONHASHSEED"]
        else:
            os.environ["PYTHONHASHSEED"] = previous


@dataclass
class _Worker:
    process: Any
    conn: Connection
    task: tuple[int, str] | None = None
    deadline: float = 0.0
    started: float = 0.0


@dataclass
class DescribePool:
    """Persistent robocrys worker processes with a per-structure wall-clock limit.

    A worker that passes the limit (or dies) is killed and replaced; the others keep going.
    Use as a context manager; `run` may be called several times.
    """

    settings: DescribeSettings
    workers: int = 1
    _pool: list[_Worker] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ctx = mp.get_context("forkserver")
        self._ctx.set_forkserver_preload([__name__])

    def __enter__(self) -> Self:
        started = [self._start() for _ in range(max(1, self.workers))]
        self._pool = [self._await_ready(w) for w in started]
        return self

    def __exit__(self, *exc: object) -> None:
        for worker in self._pool:
            self._stop(worker, kill=worker.task is not None)
        self._pool = []

    def _start(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(target=_worker_main, args=(child, self.settings), daemon=True)
        with _fixed_hash_seed():
            process.start()
        child.close()
        return _Worker(process, parent)

    @staticmethod
    def _await_ready(worker: _Worker) -> _Worker:
        try:
            kind, detail = worker.conn.recv()
        except EOFError:
            worker.process.join(timeout=5)
            kind, detail = "died", f"exit code {worker.process.exitcode}"
        if kind != "ready":
            raise RuntimeError(f"describe worker failed to start: {detail}")
        return worker

    @staticmethod
    def _stop(worker: _Worker, kill: bool) -> None:
        if kill:
            worker.process.kill()
        else:
            try:
                worker.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        worker.process.join(timeout=5)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.conn.close()

    def _replace(self, worker: _Worker) -> None:
        self._stop(worker, kill=True)
        self._pool[self._pool.index(worker)] = self._await_ready(self._start())

    def _assign(self, worker: _Worker, position: int, material_id: str, structure: Structure) -> None:
        worker.conn.send((position, material_id, structure))
        worker.started = time.monotonic()
        worker.deadline = worker.started + self.settings.timeout_s
        worker.task = (position, material_id)

    def _collect(self, worker: _Worker) -> tuple[int, dict[str, Any]]:
        """The finished row of a worker whose pipe is readable (a failed row if it died)."""
        position, material_id = worker.task  # type: ignore[misc]
        worker.task = None
        try:
            got_position, row = worker.conn.recv()
            return got_position, row
        except (EOFError, OSError):
            elapsed = round(time.monotonic() - worker.started, 3)
            worker.process.join(timeout=5)
            error = f"worker process died (exit code {worker.process.exitcode})"
            self._replace(worker)
            return position, empty_row(material_id, STATUS_FAILED, error, elapsed)

    def _expire(self, worker: _Worker) -> tuple[int, dict[str, Any]]:
        position, material_id = worker.task  # type: ignore[misc]
        elapsed = round(time.monotonic() - worker.started, 3)
        error = f"no result within {self.settings.timeout_s:g} s; worker killed"
        self._replace(worker)
        return position, empty_row(material_id, STATUS_TIMEOUT, error, elapsed)

    def run(self, items: Iterable[tuple[str, Structure]]) -> list[dict[str, Any]]:
        """Describe `(material_id, structure)` items; rows come back in input order."""
        todo = deque(enumerate(items))
        rows: list[dict[str, Any] | None] = [None] * len(todo)
        with tqdm(total=len(rows), desc="describe", unit="structure", disable=None) as bar:
            while todo or any(w.task for w in self._pool):
                for worker in self._pool:
                    if worker.task is None and todo:
                        position, (material_id, structure) = todo.popleft()
                        self._assign(worker, position, material_id, structure)
                for position, row in self._step():
                    rows[position] = row
                    bar.update(1)
        return rows  # type: ignore[return-value]

    def _step(self) -> list[tuple[int, dict[str, Any]]]:
        """Wait for the next result or deadline; the rows that finished or timed out."""
        busy = [w for w in self._pool if w.task is not None]
        timeout = max(0.0, min(w.deadline for w in busy) - time.monotonic())
        readable = set(wait([w.conn for w in busy], timeout=timeout))
        done = [self._collect(w) for w in busy if w.conn in readable]
        now = time.monotonic()
        done += [self._expire(w) for w in busy if w.conn not in readable and w.deadline <= now]
        return done


def describe_structures(
    items: Iterable[tuple[str, Structure]], settings: DescribeSettings, workers: int = 1
) -> list[dict[str, Any]]:
    """Describe structures in a fresh pool of `workers` processes; one row per item, input order."""
    with DescribePool(settings, workers) as pool:
        return pool.run(list(items))


# --- shards and merge -----------------------------------------------------------------------------
ROW_COLUMNS = (
    "material_id", "status", "error", "elapsed_s", "cpu_s", *PARTS, "description", "formula", "spg_symbol",
    "spg_number", "crystal_system", "dimensionality", "symprec", "oxidation_states",
)


def parse_shard(shard: str) -> tuple[int, int]:
    """'2-of-4' -> (1, 4): zero-based shard index and shard count (Snakemake scatteritem)."""
    match = _SHARD.match(shard)
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise ValueError(f"shard {shard!r} is not of the form I-of-N with 1 <= I <= N")
    return int(match.group(1)) - 1, int(match.group(2))


def _read_structure_rows(path: Path) -> list[dict[str, Any]]:
    columns = ["material_id", "lattice", "species", "frac_coords"]
    return read_parquet(path, "structures", columns=columns).to_pylist()


def _to_item(row: dict[str, Any]) -> tuple[str, Structure | None, str]:
    """(id, structure, error): the structure is None when the row cannot be built."""
    from crys_pipeline.ingest import row_to_structure

    try:
        return row["material_id"], row_to_structure(row), ""
    except Exception as exc:  # noqa: BLE001 - an unbuildable row becomes a failed row
        return row["material_id"], None, f"cannot build structure: {type(exc).__name__}: {exc}"


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Descriptions rows -> Arrow table in `ROW_COLUMNS` order."""
    if not rows:
        return DESCRIPTIONS.schema.empty_table()
    return pa.Table.from_pylist([{c: r[c] for c in ROW_COLUMNS} for r in rows])


def _counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    counts = {s: 0 for s in (STATUS_OK, STATUS_FAILED, STATUS_TIMEOUT)}
    for row in rows:
        counts[row["status"]] += 1
    return counts


def describe_shard(structures: Path, shard: str, settings: DescribeSettings, workers: int, out: Path) -> None:
    """Describe one scattergather shard (rows i with i % N == I-1) of a structures table.

    Args:
        structures: results/structures/{source}.parquet.
        shard: Snakemake scatteritem "I-of-N".
        settings: robocrys settings and per-structure time limit.
        workers: robocrys worker processes.
        out: results/text/{source}/describe/{shard}.parquet (written atomically at the end).
    """
    index, count = parse_shard(shard)
    items = [_to_item(r) for i, r in enumerate(_read_structure_rows(structures)) if i % count == index]
    log.info("shard %s: %d structures, %d workers, limit %g s", shard, len(items), workers, settings.timeout_s)
    good = [(mid, s) for mid, s, _ in items if s is not None]
    described = iter(describe_structures(good, settings, workers) if good else [])
    rows = [next(described) if s is not None else empty_row(mid, STATUS_FAILED, err) for mid, s, err in items]
    meta = {"source": read_meta(structures).get("source"), "versions": tool_versions(), "counts": _counts(rows)}
    write_parquet(rows_to_table(rows), out, "descriptions", {**settings.params(), "shard": shard}, meta)
    log.info("shard %s: %s", shard, meta["counts"])


def merge_shards(structures: Path, shards: list[Path], out: Path) -> None:
    """Gather shard files into one descriptions table in the structures table's order.

    Raises:
        ValueError: shards made with different settings or library versions, or an input id that
            is missing, duplicated or unknown.
    """
    if not shards:
        raise ValueError("no describe shards to merge")
    ids = [r["material_id"] for r in read_parquet(structures, "structures", columns=["material_id"]).to_pylist()]
    metas = [read_meta(p) for p in shards]
    params = [{k: v for k, v in m.get("params", {}).items() if k != "shard"} for m in metas]
    if any(p != params[0] for p in params) or any(m.get("versions") != metas[0].get("versions") for m in metas):
        raise ValueError("describe shards were made with different settings or library versions; rerun them")
    by_id: dict[str, dict[str, Any]] = {}
    for path in shards:
        for row in read_parquet(path, "descriptions").to_pylist():
            if row["material_id"] in by_id:
                raise ValueError(f"{row['material_id']!r} appears in more than one describe shard")
            by_id[row["material_id"]] = row
    missing = [i for i in ids if i not in by_id]
    unknown = sorted(set(by_id) - set(ids))
    if missing or unknown:
        raise ValueError(f"describe shards do not cover the input: missing {missing[:5]} "
                         f"({len(missing)}), unknown {unknown[:5]} ({len(unknown)})")
    rows = [by_id[i] for i in ids]
    meta = {"source": metas[0].get("source"), "versions": metas[0].get("versions"), "counts": _counts(rows),
            "shards": len(shards), "structures_sha256": sha256_file(structures)}
    write_parquet(rows_to_table(rows), out, "descriptions", params[0], meta)
    log.info("merged %d shards: %s", len(shards), meta["counts"])
