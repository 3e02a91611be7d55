"""Stage `graphs`: ALIGNN "k-nearest" crystal graphs in Parquet shards (docs/method.md §2.1-2.4, §2.7).

For each structure the builder reproduces ALIGNN's ``nearest_neighbor_edges`` +
``build_undirected_edgedata`` (jarvis-tools ``Atoms.get_all_neighbors``) with vectorised numpy:

1. Candidates: every image n of every atom j within r of atom i, with 1e-8 < d <= r and d > 0.15 A.
   Image ranges run from floor(min f) - m to ceil(max f) + m - 1 per axis over the *unwrapped*
   fractional coordinates, m = ceil((r + 0.15) |b| / 2 pi).
2. Adaptive cutoff: while some atom has fewer than k candidates, r <- max(a, b, c) if r is below it,
   else 2r (iterative; the reference recurses).
3. Shells: atom i keeps every candidate with d <= d_k (its k-th smallest distance), exact float
   comparison, so degenerate shells stay whole.
4. Canonical undirected edges (s <= t, image of t relative to s) collected as a set and emitted
   both ways (s->t with r, t->s with -r). Periodic self-images are kept twice (n and -n) unless
   ``dedup_self_images``.

Shell ties are decided by exact float comparison, so the distances are computed with jarvis-tools'
arithmetic: its ``Lattice`` rounds the matrix to 5 decimals (used for Cartesian coordinates and the
reciprocal lengths, themselves rounded), image offsets use the unrounded matrix, and d is
``sqrt((dx^2 + dy^2) + dz^2)`` of ``(image . L + x_j) - x_i``; Cartesian coordinates and image offsets
are numpy (OpenBLAS) products as in jarvis, so shell ties break as ALIGNN's do on the same machine.
Edge vectors are ``((f_t + n) - f_s) . L_rounded`` cast to float32, as in ``build_undirected_edgedata``,
but computed without BLAS (`rows_times`): ALIGNN's per-bond ``np.dot`` rounds differently on
different OpenBLAS kernels (up to ~1e-14 A in near-zero components), ours is the same on every CPU.

The stage writes ``shard-NNNNN.parquet`` files (layout ``graphs`` in schemas.py, encoded by
``io.encode_graphs``: one row per input structure, failures with status/error) plus ``manifest.json``
(counts, the build time and the sha256 of every shard, verified by the reader). A shard holds no build
time, so two builds of the same graphs are the same bytes. The graph parameters are stamped in
every shard and checked by ``io.read_graph_dir(expect=...)``. Line graphs are not stored: the
model builds them per batch (``crys_pipeline.models.line_graph``).
"""

from __future__ import annotations

import itertools
import logging
import math
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from crys_pipeline import __version__, io
from crys_pipeline.lifecycle import die_with_parent
from crys_pipeline.schemas import STATUS_FAILED, STATUS_OK
from crys_pipeline.settings import GraphSettings

log = logging.getLogger(__name__)

#: Version of the neighbour algorithm, stamped in the params: bump when the graphs would change.
GRAPH_ALGORITHM = "alignn-knn/2"
BOND_TOL = 0.15  # Angstrom: candidates at or below this distance are excluded (jarvis bond_tol)
ZERO_DIST = 1e-8  # Angstrom: the atom itself
LATTICE_DECIMALS = 5  # jarvis Lattice rounds its matrix to this many decimals
LENGTH_DECIMALS = 6  # jarvis Lattice.abc rounds lengths to this many decimals
CHUNK_ELEMENTS = 1 << 21  # pair distances evaluated per numpy block (bounds peak memory)
MAX_IMAGE_SITES = 1 << 22  # periodic images x atoms one structure may need before it is failed
ROWS_PER_TASK = 32  # structures per worker task
MANIFEST = "manifest.json"


class GraphError(RuntimeError):
    """A structure whose neighbour search cannot complete (recorded as a failed row)."""


def graph_meta(params: GraphSettings) -> dict[str, Any]:
    """The params dict stamped in (and expected from) every shard: the graph-defining settings and the algorithm."""
    return {**params.identity(), "algorithm": GRAPH_ALGORITHM}


@dataclass(frozen=True)
class CrystalGraph:
    """One crystal graph.

    Attributes:
        edge_index: int64 [2, E]; row 0 source, row 1 target.
        edge_vec: float32 [E, 3]; Cartesian bond vector source -> target image, Angstrom.
        cutoff: the cutoff the neighbour search ended with (after any growth).
    """

    edge_index: np.ndarray
    edge_vec: np.ndarray
    cutoff: float


@dataclass(frozen=True)
class _Cell:
    """A cell with jarvis-tools' arithmetic precomputed."""

    matrix: np.ndarray  # [3, 3] lattice rows as given (image offsets)
    rounded: np.ndarray  # [3, 3] matrix rounded like jarvis Lattice (Cartesian coordinates, edge vectors)
    frac: np.ndarray  # [N, 3] fractional coordinates, unwrapped
    cart: np.ndarray  # [N, 3] frac . rounded
    recip_lengths: np.ndarray  # [3] |b_c| with 2 pi, jarvis-rounded
    max_length: float  # max(a, b, c), jarvis-rounded
    centre: np.ndarray  # [3] centroid of cart
    spread: float  # max distance of an atom from the centroid


def _row_lengths(matrices: np.ndarray) -> list[list[float]]:
    """The jarvis ``Lattice.abc`` of each [3, 3] matrix in [B, 3, 3]: row norms rounded to 6 decimals."""
    return [[round(x, LENGTH_DECIMALS) for x in row] for row in np.sqrt(np.sum(matrices**2, axis=2)).tolist()]


def rows_times(rows: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``rows . matrix`` for [K, 3] rows and a [3, 3] matrix, without BLAS: ``(r0 m0 + r1 m1) + r2 m2``.

    numpy's ``dot`` hands this product to OpenBLAS, whose kernels (Haswell, SkylakeX, Zen, ...) round
    it differently (fused multiply-add or not, batched or one vector at a time), so the last bits of
    a near-zero component depended on the machine. Three elementwise products and two additions in a
    fixed order round the same way on every CPU.
    """
    return rows[:, 0, None] * matrix[0] + rows[:, 1, None] * matrix[1] + rows[:, 2, None] * matrix[2]


def make_cell(lattice: Any, frac_coords: Any) -> _Cell:
    """Precompute the jarvis-tools view of a cell (rows of `lattice` are lattice vectors)."""
    matrix = np.asarray(lattice, dtype=np.float64).reshape(3, 3)
    frac = np.asarray(frac_coords, dtype=np.float64).reshape(-1, 3)
    if len(frac) == 0:
        raise GraphError("structure has no atoms")
    rounded = np.around(matrix, decimals=LATTICE_DECIMALS)
    recip = np.around(2 * np.pi * np.linalg.inv(rounded).T, decimals=LATTICE_DECIMALS)
    cart = np.dot(frac, rounded)
    centre = cart.mean(axis=0)
    rel = cart - centre  # [N, 3]
    recip_lengths, lengths = _row_lengths(np.stack([recip, rounded]))
    return _Cell(matrix, rounded, frac, cart, np.array(recip_lengths), max(lengths), centre,
                 float(np.sqrt(np.einsum("nc,nc->n", rel, rel).max())))


def _image_offsets(cell: _Cell, r: float) -> tuple[np.ndarray, np.ndarray]:
    """(images float64 [M, 3], offsets image . L [M, 3]) in jarvis' ranges for cutoff r."""
    reach = np.ceil((r + BOND_TOL) * cell.recip_lengths / (2 * math.pi))
    lo = np.floor(np.min(cell.frac, axis=0)) - reach
    hi = np.ceil(np.max(cell.frac, axis=0)) + reach
    shape = (hi - lo).astype(np.int64)
    if int(np.prod(shape)) * len(cell.frac) > MAX_IMAGE_SITES:
        raise GraphError(f"neighbour search at r={r:g} A needs {int(np.prod(shape))} images "
                         f"for {len(cell.frac)} atoms")
    images = np.indices(shape).reshape(3, -1).T + lo  # [M, 3]
    return images, np.dot(images, cell.matrix)


def candidates_within(
    cell: _Cell, *, images: np.ndarray, offsets: np.ndarray, radius: float
) -> tuple[np.ndarray, ...]:
    """Neighbour candidates (jarvis ``get_all_neighbors``) with 1e-8 < d <= radius and d > 0.15 A.

    Only (image, j) whose shifted atom lies within radius + spread of the centroid can reach any atom
    (so only images with |o| <= radius + 2 spread, as every atom is within spread of the centroid);
    for those, d_ij = |(o + x_j) - x_i| is evaluated with jarvis' operation order: a three-term numpy
    sum adds left to right, so ``sqrt((dx^2 + dy^2) + dz^2)`` gives jarvis' bits.

    Returns:
        (i int64 [C], j int64 [C], d float64 [C], image row into `images` int64 [C]).
    """
    reach = radius + cell.spread + 1e-6 * (1.0 + radius)
    near = np.flatnonzero(np.einsum("mc,mc->m", offsets, offsets) <= (reach + cell.spread) ** 2)
    shifted = offsets[near, None, :] + cell.cart[None, :, :]  # [M', N(j), 3]: jarvis image coordinates
    rel = shifted - cell.centre  # [M', N(j), 3]
    m, j = np.nonzero(np.einsum("mjc,mjc->mj", rel, rel) <= reach * reach)
    points = shifted[m, j]  # [P, 3]
    m = near[m]
    step = max(1, CHUNK_ELEMENTS // len(cell.frac))
    parts = []
    for start in range(0, len(points), step):
        block = points[start:start + step]
        total = None
        for axis in range(3):
            diff = block[:, axis, None] - cell.cart[None, :, axis]  # [p, N(i)]
            diff *= diff
            total = diff if total is None else np.add(total, diff, out=total)
        dist = np.sqrt(total, out=total)
        p, i = np.nonzero((dist <= radius) & (dist > BOND_TOL))  # BOND_TOL > ZERO_DIST excludes the atom itself
        parts.append((i, j[start + p], dist[p, i], m[start + p]))
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64)
    return tuple(np.concatenate(x) for x in zip(*parts, strict=True))


def _shell_mask(site: np.ndarray, dist: np.ndarray, n_sites: int, k: int) -> np.ndarray:
    """Boolean mask [C]: candidates within their site's k-th smallest distance (exact comparison)."""
    order = np.lexsort((dist, site))
    starts = np.concatenate(([0], np.cumsum(np.bincount(site, minlength=n_sites))[:-1]))
    kth = dist[order][starts + k - 1]  # [n_sites]
    return dist <= kth[site]


def _trial_radius(cell: _Cell, k: int) -> float:
    """A radius that usually holds k neighbours of every atom: 1.4x the radius of k atomic volumes."""
    volume = abs(float(np.linalg.det(cell.rounded)))
    return 1.4 * (3.0 * k * volume / (4.0 * math.pi * len(cell.frac))) ** (1.0 / 3.0)


def _grown_candidates(cell: _Cell, params: GraphSettings) -> tuple[float, np.ndarray, tuple[np.ndarray, ...]]:
    """(final cutoff, images [M, 3], candidates) at the first cutoff where every atom has k candidates.

    The growth of docs/method.md §2.2, as a loop. At each cutoff r a smaller trial radius is tried
    first: if every atom has k candidates within it, every k-th distance is below it and the
    candidates beyond it can never be selected, so the shells are the same as from the full set
    within r (which is computed only when the trial fails).
    """
    r, k, n = float(params.cutoff), params.max_neighbors, len(cell.frac)
    trial = _trial_radius(cell, k)
    while True:
        images, offsets = _image_offsets(cell, r)
        for radius in ((trial, r) if trial < r else (r,)):
            cand = candidates_within(cell, images=images, offsets=offsets, radius=radius)
            if np.bincount(cand[0], minlength=n).min() >= k:
                return r, images, cand
        r = cell.max_length if r < cell.max_length else 2 * r
        log.debug("cutoff grown to %g A", r)


def _unique_bonds(s: np.ndarray, t: np.ndarray, img: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
    """Unique (s, t, image) rows, via one int64 key per row."""
    half = int(np.abs(img).max(initial=0)) + 1
    width = 2 * half + 1
    key = (s * n + t) * width**3 + ((img[:, 0] + half) * width + img[:, 1] + half) * width + img[:, 2] + half
    key = np.unique(key)
    pair, rest = np.divmod(key, width**3)
    rest, c = np.divmod(rest, width)
    a, b = np.divmod(rest, width)
    return pair // n, pair % n, np.stack([a, b, c], axis=1) - half


def _undirected_keys(cell: _Cell, params: GraphSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The unique (s, t, image) bond set ALIGNN's edge dict would hold, plus the final cutoff."""
    r, images, (i, j, dist, image_row) = _grown_candidates(cell, params)
    keep = _shell_mask(i, dist, len(cell.frac), params.max_neighbors)
    i, j, img = i[keep], j[keep], images[image_row[keep]].astype(np.int64)
    if params.use_canonize:
        swap = j < i
        s, t = np.where(swap, j, i), np.where(swap, i, j)
        img = np.where(swap[:, None], -img, img)
    else:
        s, t = i, j
    if params.dedup_self_images:
        first = np.take_along_axis(img, np.argmax(img != 0, axis=1)[:, None], axis=1)[:, 0]
        img = np.where(((s == t) & (first < 0))[:, None], -img, img)
    s, t, img = _unique_bonds(s, t, img, len(cell.frac))
    return s, t, img, r


def knn_graph(lattice: Any, frac_coords: Any, params: GraphSettings = GraphSettings()) -> CrystalGraph:
    """ALIGNN k-nearest crystal graph of one structure.

    Args:
        lattice: [3, 3] lattice vectors as rows, Angstrom.
        frac_coords: [N, 3] fractional coordinates (not wrapped).
        params: graph parameters.

    Returns:
        the graph; bond b is stored as edges 2b (s -> t) and 2b + 1 (t -> s).
    """
    cell = make_cell(lattice, frac_coords)
    s, t, img, r = _undirected_keys(cell, params)
    vec = rows_times((cell.frac[t] + img) - cell.frac[s], cell.rounded)  # [B, 3]
    edge_index = np.empty((2, 2 * len(s)), dtype=np.int64)  # columns s0->t0, t0->s0, s1->t1, ...
    edge_index[0, 0::2], edge_index[0, 1::2], edge_index[1, 0::2], edge_index[1, 1::2] = s, t, t, s
    edge_vec = np.empty((2 * len(s), 3), dtype=np.float32)  # [2B, 3]
    edge_vec[0::2], edge_vec[1::2] = vec, -vec
    return CrystalGraph(edge_index, edge_vec, r)


@cache
def atomic_number(symbol: str) -> int:
    """Atomic number of an element symbol (pymatgen)."""
    from pymatgen.core.periodic_table import Element

    return int(Element(symbol).Z)


def graph_row(record: dict[str, Any], params: GraphSettings) -> dict[str, Any]:
    """One output row for one structures-table record; any error becomes a failed row with its reason."""
    row: dict[str, Any] = {"material_id": record["material_id"], "natoms": len(record["species"])}
    try:
        z = np.array([atomic_number(sym) for sym in record["species"]], dtype=np.int8)
        graph = knn_graph(record["lattice"], record["frac_coords"], params)
    except Exception as exc:  # every failure becomes a row with its reason
        log.warning("%s: graph failed: %s", record["material_id"], exc)
        return {**row, "status": STATUS_FAILED, "error": f"{type(exc).__name__}: {exc}", "nedges": 0,
                "cutoff": None, "z": np.zeros(0, np.int8), "edge_index": np.zeros((2, 0), np.int64),
                "edge_vec": np.zeros((0, 3), np.float32)}
    return {**row, "status": STATUS_OK, "error": None, "nedges": graph.edge_index.shape[1],
            "cutoff": graph.cutoff, "z": z, "edge_index": graph.edge_index, "edge_vec": graph.edge_vec}


def _rows_task(task: tuple[list[dict[str, Any]], GraphSettings]) -> list[dict[str, Any]]:
    records, params = task
    return [graph_row(rec, params) for rec in records]


def _records(structures: Path) -> list[dict[str, Any]]:
    table = io.read_parquet(structures, "structures",
                            columns=["material_id", "lattice", "species", "frac_coords"])
    return table.to_pylist()


def _chunks(records: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(records), size):
        yield records[start:start + size]


def _graph_rows(records: list[dict[str, Any]], params: GraphSettings, workers: int) -> Iterator[dict[str, Any]]:
    """Graph rows in input order, computed in `workers` processes (in this process when 1)."""
    tasks = ((chunk, params) for chunk in _chunks(records, ROWS_PER_TASK))
    bar = tqdm(total=len(records), desc="graphs", unit="crystal", disable=not sys.stderr.isatty())
    if workers <= 1:
        results: Iterable[list[dict[str, Any]]] = map(_rows_task, tasks)
        yield from _with_progress(results, bar)
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=die_with_parent) as pool:
        yield from _with_progress(pool.map(_rows_task, tasks), bar)


def _with_progress(results: Iterable[list[dict[str, Any]]], bar: tqdm) -> Iterator[dict[str, Any]]:
    with bar:
        for rows in results:
            bar.update(len(rows))
            yield from rows


def build_graphs(structures: Path, *, params: GraphSettings, workers: int, out_dir: Path) -> dict:
    """Build the graph shards of one structures table.

    Args:
        structures: structures Parquet (`ingest` output).
        params: graph settings (the graph-defining ones stamped in every shard; `shard_size` crystals per shard).
        workers: worker processes (1 = in this process).
        out_dir: output folder; gets shard-NNNNN.parquet files and manifest.json (stale shards removed).

    Returns:
        the manifest (also written to out_dir/manifest.json).
    """
    shard_size = params.shard_size
    records = _records(structures)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = {"source": io.read_meta(structures).get("source"), "structures_sha256": io.sha256_file(structures),
             "shard_size": shard_size}
    n_shards = max(1, math.ceil(len(records) / shard_size))
    shards, rows = [], _graph_rows(records, params, workers)
    for index in range(n_shards):
        table = io.encode_graphs(list(itertools.islice(rows, shard_size)))
        name = f"shard-{index:05d}.parquet"
        io.write_parquet(table, out_dir / name, kind="graphs", params=graph_meta(params),
                         extra={**extra, "shard": index, "n_shards": n_shards})
        failed = table.num_rows - sum(s == STATUS_OK for s in table.column("status").to_pylist())
        shards.append({"file": name, "rows": table.num_rows, "ok": table.num_rows - failed, "failed": failed,
                       "sha256": io.sha256_file(out_dir / name)})
    for stale in {p.name for p in out_dir.glob("shard-*.parquet")} - {s["file"] for s in shards}:
        (out_dir / stale).unlink()
    return _write_manifest(out_dir, params, shards, extra)


def _write_manifest(out_dir: Path, params: GraphSettings, shards: list[dict], extra: dict[str, Any]) -> dict:
    manifest = {
        "kind": "graphs_manifest",
        "package_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="microseconds"),
        "params": graph_meta(params),
        **extra,
        "shards": shards,
        "counts": {key: sum(s[key] for s in shards) for key in ("rows", "ok", "failed")},
    }
    io.write_json(manifest, out_dir / MANIFEST)
    log.info("graphs: %d crystals, %d ok, %d failed, %d shards in %s", manifest["counts"]["rows"],
             manifest["counts"]["ok"], manifest["counts"]["failed"], len(shards), out_dir)
    return manifest
