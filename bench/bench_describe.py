"""Benchmark: the describe stage against stock robocrys, on the same real structures, in one run.

Stock: `robocrys.cli.robocrystallographer` called per structure in this process, exactly as the
robocrys command line does (a new StructureCondenser and StructureDescriber per structure, oxidation
states guessed first), with the same condenser settings and text format as the pipeline.
Ours: one `DescribePool` worker process (a per-core comparison), started before the clock runs,
with `plain_orientation=False` (the pipeline's one deliberate text change, numpy-2 integer reprs in
component orientations, is tested separately in tests/test_describe.py).

The benchmark re-executes itself with PYTHONHASHSEED=0, the seed of the pipeline's workers:
robocrys orders some words by iterating sets of strings, so stock text depends on the seed.
Both sides are timed in CPU seconds of the process doing the work (this machine is shared, so wall
time is noisy) and in wall seconds. The texts must be byte-identical. The last line is
`describe speedup: X.XXx (identical K/N)`, the ratio of stock to our CPU seconds.

Usage: python bench/bench_describe.py --n 30 [--fmt raw|unicode]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

SHARED = Path(os.environ.get("CRYS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
PYTHON_HASH_SEED = "0"  # = crys_pipeline.describe.PYTHON_HASH_SEED, the workers' seed
FILES = (("jarvis_dft3d_2021_tiny.jsonl", "jid"), ("mp_2018_tiny.jsonl", "material_id"))


def load_structures(n: int) -> list[tuple[str, object]]:
    """The first structures of the two real tiny snapshots, alternating JARVIS and MP."""
    from pymatgen.core import Lattice, Structure

    lists = []
    for name, key in FILES:
        records = [json.loads(line) for line in (SHARED / name).read_text().splitlines() if line.strip()]
        lists.append([(r[key], Structure(Lattice(r["lattice_mat"]), r["species"], r["frac_coords"]))
                      for r in records])
    mixed = [item for pair in zip(*lists, strict=False) for item in pair]  # the snapshots differ in length
    return mixed[:n]


def run_stock(items: list, fmt: str, condenser_kwargs: dict) -> tuple[list[str | None], list[float], float]:
    """Stock robocrys per structure: (texts or None on error, CPU seconds each, wall seconds)."""
    from robocrys.cli import robocrystallographer

    texts, cpu = [], []
    wall = time.perf_counter()
    for _, structure in items:
        start = time.process_time()
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                texts.append(robocrystallographer(structure.copy(), dict(condenser_kwargs), {"fmt": fmt}))
        except Exception:  # a stock failure is compared with ours
            texts.append(None)
        cpu.append(time.process_time() - start)
    return texts, cpu, time.perf_counter() - wall


def run_ours(items: list, fmt: str) -> tuple[list[dict], float, float]:
    """Our pool with one worker: (rows, wall seconds of the run, wall seconds of the worker start)."""
    from crys_pipeline.describe import DescribePool
    from crys_pipeline.settings import DescribeSettings

    start = time.perf_counter()
    with DescribePool(DescribeSettings(fmt=fmt, timeout_s=3600, plain_orientation=False), workers=1) as pool:
        ready = time.perf_counter()
        rows = pool.run(items)
        wall = time.perf_counter() - ready
    return rows, wall, ready - start


def main() -> int:
    """Run both sides, print the comparison and the speedup line; exit 1 unless all texts are identical."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30, help="number of structures")
    parser.add_argument("--fmt", default="raw", choices=["raw", "unicode"])
    args = parser.parse_args()
    if os.environ.get("PYTHONHASHSEED") != PYTHON_HASH_SEED:
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONHASHSEED": PYTHON_HASH_SEED})
    warnings.filterwarnings("ignore")
    from crys_pipeline.describe import CONDENSER_KWARGS, tool_versions

    items = load_structures(args.n)
    print(f"{len(items)} structures, versions {tool_versions()}", flush=True)
    rows, ours_wall, startup = run_ours(items, args.fmt)
    stock, stock_cpu, stock_wall = run_stock(items, args.fmt, CONDENSER_KWARGS)
    ours_cpu = [r["cpu_s"] or 0.0 for r in rows]
    identical = 0
    for (material_id, _), row, text in zip(items, rows, stock, strict=True):
        ours = row["description"] if row["status"] == "ok" else None
        if ours == text:
            identical += 1
        else:
            print(f"DIFFERENT {material_id} ({row['status']} {row['error']})\n  ours:  {ours}\n  stock: {text}")
    n = len(items)
    print(f"stock: CPU {sum(stock_cpu):.1f} s (median {statistics.median(stock_cpu):.2f} s/structure), "
          f"wall {stock_wall:.1f} s")
    print(f"ours (1 worker): CPU {sum(ours_cpu):.1f} s (median {statistics.median(ours_cpu):.2f} s/structure), "
          f"wall {ours_wall:.1f} s, worker start {startup:.1f} s wall (not counted)")
    print(f"wall-clock speedup: {stock_wall / ours_wall:.2f}x")
    print(f"describe speedup: {sum(stock_cpu) / sum(ours_cpu):.2f}x (identical {identical}/{n})")
    return 0 if identical == n else 1


if __name__ == "__main__":
    sys.exit(main())
