"""ALIGNN's own graph builder as the parity reference (test and bench helper).

`alignn.graphs` imports without DGL: the installed alignn (2026.8.11) guards its DGL import and only
the DGL-specific helpers fail lazily. `nearest_neighbor_edges` + `build_undirected_edgedata` are the
pure numpy/jarvis parts used by ALIGNN's and CrysMMNet's `atoms_to_graph(neighbor_strategy="k-nearest")`,
so they are called as they are, on jarvis `Atoms` built from the same lattice rows and fractional
coordinates as our builder reads.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from conftest import SHARED_DATA

JARVIS_FULL = SHARED_DATA / "jarvis_dft3d_2021_structures.jsonl.gz"
MP_FULL = SHARED_DATA / "mp_2018_structures.jsonl.gz"


def record_id(rec: dict[str, Any]) -> str:
    """Material id of a JARVIS (jid) or MP (material_id) record."""
    return rec.get("jid") or rec["material_id"]


def alignn_edges(rec: dict[str, Any], cutoff: float = 8.0, max_neighbors: int = 12,
                 use_canonize: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(src [E], dst [E], r float32 [E, 3]) from ALIGNN's k-nearest builder."""
    from alignn.graphs import build_undirected_edgedata, nearest_neighbor_edges
    from jarvis.core.atoms import Atoms

    atoms = Atoms(lattice_mat=rec["lattice_mat"], coords=rec["frac_coords"], elements=rec["species"],
                  cartesian=False)
    edges, _ = nearest_neighbor_edges(atoms=atoms, cutoff=cutoff, max_neighbors=max_neighbors,
                                      use_canonize=use_canonize)
    u, v, r, _ = build_undirected_edgedata(atoms, edges)
    return u.numpy(), v.numpy(), r.numpy()


#: Largest bond-vector difference (Angstrom) accepted between our builder and ALIGNN's. ALIGNN takes
#: each bond vector from its own ``np.dot`` (OpenBLAS gemv), whose rounding depends on the kernel
#: OpenBLAS picks for the CPU (SkylakeX fuses multiply-adds, Haswell/Zen/Prescott do not), so ALIGNN's
#: own near-zero components move by up to ~1e-14 A between machines; ours are computed without BLAS.
VEC_ATOL = 1e-10


def edge_multiset(src: Any, dst: Any, vec: Any, decimals: int | None = None) -> Counter:
    """Multiset of (src, dst, bond vector); exact float32 vectors unless `decimals` is given."""
    vec = np.asarray(vec, dtype=np.float32).astype(np.float64).reshape(-1, 3)
    if decimals is not None:
        vec = np.round(vec, decimals)
    vec = vec + 0.0  # -0.0 -> 0.0
    return Counter(zip(np.asarray(src).tolist(), np.asarray(dst).tolist(), map(tuple, vec.tolist()), strict=True))


def _sorted_edges(src: Any, dst: Any, vec: Any) -> tuple[np.ndarray, np.ndarray]:
    """(src/dst int64 [E, 2], vec float64 [E, 3]) in a canonical order: by src, dst, then the vector
    rounded to 1e-6 A (so vectors that differ by rounding noise sort alike)."""
    pairs = np.stack([np.asarray(src), np.asarray(dst)], axis=1).astype(np.int64)  # [E, 2]
    vec = np.asarray(vec, dtype=np.float32).astype(np.float64).reshape(-1, 3)
    key = np.round(vec, 6) + 0.0  # [E, 3]
    order = np.lexsort((key[:, 2], key[:, 1], key[:, 0], pairs[:, 1], pairs[:, 0]))
    return pairs[order], vec[order]


def compare_edges(ours: tuple[Any, Any, Any], ref: tuple[Any, Any, Any], atol: float = VEC_ATOL) -> str:
    """How two (src, dst, float32 vec) edge lists relate, as multisets.

    Returns:
        "identical" (same edges, bit-equal vectors), "close" (same edges, every vector component
        within `atol` Angstrom) or "different" (other bonds, or a vector further off).
    """
    if edge_multiset(*ours) == edge_multiset(*ref):
        return "identical"
    (pairs_a, vec_a), (pairs_b, vec_b) = _sorted_edges(*ours), _sorted_edges(*ref)
    if pairs_a.shape != pairs_b.shape or not np.array_equal(pairs_a, pairs_b):
        return "different"
    return "close" if np.abs(vec_a - vec_b).max(initial=0.0) <= atol else "different"


def read_records(path: Path, ids: set[str] | None = None, every: int | None = None) -> Iterator[dict[str, Any]]:
    """Records of a (gzipped) JSON-lines structure file: those whose id is in `ids` plus every `every`-th
    record (positions 0, every, 2 every, ...); all records when neither is given."""
    select_all = ids is None and every is None
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        for pos, line in enumerate(handle):
            rec = json.loads(line)
            if select_all or (every and pos % every == 0) or record_id(rec) in (ids or ()):
                yield rec
