"""Graph construction speed: ALIGNN's k-nearest builder vs crys_pipeline.graphs, same structures, one run.

Both builders run in this process on the same N real structures (evenly spaced through
../shared/data/jarvis_dft3d_2021_structures.jsonl.gz or mp_2018_structures.jsonl.gz), interleaved per
structure so load changes on a shared machine hit both alike; with --repeats R each structure's time is
the minimum over R rounds. Reference: `alignn.graphs.nearest_neighbor_edges` +
`build_undirected_edgedata` (cutoff 8, k 12, canonize), exactly what ALIGNN/CrysMMNet call per
structure. Ours: `crys_pipeline.graphs.knn_graph` with the same parameters. Every pair of graphs is
compared as a multiset of (src, dst, float32 bond vector): the same bonds, every vector component
within 1e-10 A (`graph_reference.VEC_ATOL`); how many are also bit-identical is printed too. ALIGNN's
vectors come from OpenBLAS and round differently per CPU kernel (set OPENBLAS_CORETYPE to compare
kernels); ours are computed without BLAS.

Prints per-builder ms per structure and, as its last line,
`graph speedup: X.XXx (same bonds, vectors within 1e-10 A: K/N; bit-identical: B/N)`
(total reference time over total ours).

Usage: .venv/bin/python bench/bench_graphs.py [--n 300] [--source jarvis|mp] [--repeats 1]
"""

from __future__ import annotations

import argparse
import gzip
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from graph_reference import JARVIS_FULL, MP_FULL, VEC_ATOL, alignn_edges, compare_edges, read_records

from crys_pipeline.graphs import knn_graph


def evenly_spaced(path: Path, n: int) -> list[dict]:
    """n records evenly spaced through a structure file (deterministic)."""
    with gzip.open(path, "rt") as handle:
        total = sum(1 for _ in handle)
    wanted = set(np.linspace(0, total - 1, n).round().astype(int).tolist())
    return [rec for pos, rec in enumerate(read_records(path)) if pos in wanted]


def time_one(rec: dict, repeats: int) -> tuple[float, float, str]:
    """(reference seconds, our seconds, `compare_edges` verdict) for one structure."""
    ref_t, our_t = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        src, dst, vec = alignn_edges(rec)
        mid = time.perf_counter()
        graph = knn_graph(rec["lattice_mat"], rec["frac_coords"])
        end = time.perf_counter()
        ref_t.append(mid - start)
        our_t.append(end - mid)
    return min(ref_t), min(our_t), compare_edges((*graph.edge_index, graph.edge_vec), (src, dst, vec))


def blas_kernel() -> str:
    """The OpenBLAS core type numpy runs on, as threadpoolctl reports it (and OPENBLAS_CORETYPE if set)."""
    from threadpoolctl import threadpool_info

    arch = next((i.get("architecture") for i in threadpool_info() if i.get("internal_api") == "openblas"), None)
    return f"{arch or 'unknown'} (OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')})"


def main() -> None:
    """Run the benchmark and print the speedup as the last line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="number of structures")
    parser.add_argument("--source", choices=["jarvis", "mp"], default="jarvis")
    parser.add_argument("--repeats", type=int, default=1, help="rounds per structure (minimum is kept)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    records = evenly_spaced(JARVIS_FULL if args.source == "jarvis" else MP_FULL, args.n)
    knn_graph(records[0]["lattice_mat"], records[0]["frac_coords"])  # warm-up (imports, caches)
    alignn_edges(records[0])
    ref, ours, verdicts = [], [], []
    for rec in records:
        r, o, verdict = time_one(rec, args.repeats)
        ref.append(r)
        ours.append(o)
        verdicts.append(verdict)
    natoms = [len(rec["species"]) for rec in records]
    print(f"structures: {len(records)} from {args.source}, atoms per cell median {int(np.median(natoms))}, "
          f"max {max(natoms)}")
    print(f"alignn: {1e3 * np.mean(ref):.3f} ms/structure (median {1e3 * np.median(ref):.3f})")
    print(f"ours:   {1e3 * np.mean(ours):.3f} ms/structure (median {1e3 * np.median(ours):.3f})")
    n, close, exact = len(records), sum(v != "different" for v in verdicts), verdicts.count("identical")
    print(f"blas kernel: {blas_kernel()}")
    print(f"graph speedup: {sum(ref) / sum(ours):.2f}x (same bonds, vectors within {VEC_ATOL:g} A: {close}/{n}; "
          f"bit-identical: {exact}/{n})")


if __name__ == "__main__":
    main()
