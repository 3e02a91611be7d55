"""What the fusion comparison could resolve at a larger scale, from the variance of the runs at hand (§11.5).

For each pair of results/fusion.csv that compares a new variant with CrysMMNet, the paired differences of the runs
(d[s, i] = |error of the variant| - |error of CrysMMNet|, relative to CrysMMNet's MAE) give the two variance terms of
the interval of docs/method.md §7.6: var(m_i) over test materials and var(D_s) over seeds. Keeping those relative
variances, the half-width of the 95 % interval with n test materials and S seeds is t(df) sqrt(var(m)/n +
var(D)/S). This prints it at the runs' own scale and at config/fusion_gpu.yaml's (the official test sets of the
17,314 structures, 5 seeds): the smallest relative difference each comparison could resolve there. More training
data lowers both variances, so the projection is conservative.

Usage: .venv/bin/python bench/fusion_power.py results/fusion.csv [--results results] [--seeds 5]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from scipy.stats import t

from crys_pipeline.comparisons import read_comparisons
from crys_pipeline.run_id import RunId
from crys_pipeline.run_results import aligned_errors, common_test_ids, load_run_result

#: Test materials per property at config/fusion_gpu.yaml's scale (official splits of the 17,314 structures).
GPU_TEST = {"formation_energy_peratom": 1729, "optb88vdw_bandgap": 1729, "optb88vdw_total_energy": 1729,
            "mbj_bandgap": 506, "bulk_modulus_kv": 518, "shear_modulus_gv": 518}


def half_width(var_m: float, var_d: float, n: int, seeds: int) -> float:
    """Half-width of the 95 % interval (Welch-Satterthwaite df) for the given variance terms and sizes."""
    terms = [(var_m / n, n - 1), (var_d / seeds, seeds - 1)]
    variance = sum(v for v, _ in terms)
    df = variance**2 / sum(v**2 / k for v, k in terms if v > 0)
    return float(t.ppf(0.975, df) * math.sqrt(variance))


def components(results: Path, row: dict) -> tuple[float, float, int, int]:
    """(var over materials of m_i, var over seeds of D_s, n, S) of one comparison, relative to the reference MAE."""
    runs = {}
    for name in (row["variant"], row["reference"]):
        model = RunId(row["source"], row["property"], name, row["regime"], 0)
        seeds = sorted((run.seed, folder) for folder in model.folder(results).parent.iterdir()
                       if (run := RunId.from_folder(folder)) is not None and run.model == model.model)
        runs[name] = [load_run_result(folder / "summary.json") for _, folder in seeds]
    both = runs[row["variant"]] + runs[row["reference"]]
    errors, _ = aligned_errors(both, common_test_ids(both))
    s = len(runs[row["variant"]])
    d = (np.abs(errors[:s]) - np.abs(errors[s:])) / row["mae_reference"]
    return float(np.var(d.mean(0), ddof=1)), float(np.var(d.mean(1), ddof=1)), d.shape[1], s


def main() -> None:
    """Print one line per comparison with CrysMMNet."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fusion_csv", type=Path)
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--seeds", type=int, default=5, help="seeds at the larger scale")
    args = parser.parse_args()
    rows = [r for r in read_comparisons(args.fusion_csv) if r["reference"] == "crysmmnet"]
    for row in rows:
        var_m, var_d, n, s = components(args.results, row)
        here = half_width(var_m, var_d, n, s)
        there = half_width(var_m, var_d, GPU_TEST[row["property"]], args.seeds)
        print(f"{row['variant']:24s} {row['property']:24s} rel. diff {100 * row['rel_diff']:+6.1f} %  half-width "
              f"here ({n} materials, {s} seeds) {100 * here:5.1f} %  at the GPU scale ({GPU_TEST[row['property']]}, "
              f"{args.seeds}) {100 * there:5.1f} %")


if __name__ == "__main__":
    main()
