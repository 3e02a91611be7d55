"""What makes an MAE evidence: the constant baseline, paired intervals over seeds and test materials, verdicts.

Torch-free; the training job, the tables, the comparisons and the report all judge with these functions
(docs/method.md §7.6).

* The **constant baseline** of a (source, target, regime) is the median of its training targets: among all
  constant predictions the median minimises the training MAE. Its test MAE stands beside every model's.
* A **paired difference** compares two predictors on the same test materials: for seed s and material i,
  d[s, i] = |error of A| - |error of B|, so the mean of d is MAE(A) - MAE(B).
* Its **interval** accounts for both sources of chance, the test materials (a sample of the materials
  the property could be asked of) and the seeds (initialisation and shuffle): with m_i the mean of d over
  seeds and D_s the mean over materials,

      SE^2 = var(m_i) / n + var(D_s) / S,

  each variance the sample variance (ddof 1), a t interval with Welch-Satterthwaite degrees of freedom.
  Under d[s, i] = mu + a_i + b_s + e_si the two terms estimate Var(mean d) plus one extra
  var(e) / (n S): the interval is slightly conservative, never too narrow. With one seed the seed term is
  unknown and left out (the interval then covers test materials only; `n_seeds` says so).
* The **verdict** is read from the interval alone: `lower` (A's MAE is lower: the interval lies below 0),
  `higher` (above 0) or `not resolved` (it contains 0, or cannot be computed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: How the constant baseline is fitted (written beside every baseline number).
BASELINE = "train median"
#: Coverage of every interval.
LEVEL = 0.95
LOWER, HIGHER, NOT_RESOLVED = "lower", "higher", "not resolved"
VERDICTS = (LOWER, HIGHER, NOT_RESOLVED)


def constant_baseline(y_train: np.ndarray) -> float:
    """The baseline constant: the median of the training targets (NaN without any)."""
    y = np.asarray(y_train, dtype=np.float64)
    return float(np.median(y)) if y.size else math.nan


@dataclass(frozen=True)
class Interval:
    """A paired mean difference of absolute errors with its interval.

    Attributes:
        mean: mean of d over seeds and materials (= MAE(A) - MAE(B)).
        low: lower end of the `LEVEL` interval.
        high: upper end.
        se: its standard error.
        df: degrees of freedom of the t quantile.
        n_seeds: seeds S behind it.
        n_materials: test materials n behind it.
    """

    mean: float
    low: float
    high: float
    se: float
    df: float
    n_seeds: int
    n_materials: int

    @property
    def verdict(self) -> str:
        """`lower`, `higher` or `not resolved`, from the interval alone."""
        if self.high < 0:
            return LOWER
        if self.low > 0:
            return HIGHER
        return NOT_RESOLVED


def _t_quantile(level: float, df: float) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


def paired_interval(diffs: np.ndarray, level: float = LEVEL) -> Interval:
    """The interval of the mean of `diffs` over seeds and test materials (see the module docstring).

    Args:
        diffs: float [S, n], d[s, i] = |err_A| - |err_B| of seed s on material i (every seed on the same
            materials, in the same order); a 1-d array is one seed.
        level: coverage.

    Returns:
        The interval; NaN ends (verdict `not resolved`) when fewer than two materials or a non-finite d.
    """
    d = np.atleast_2d(np.asarray(diffs, dtype=np.float64))
    n_seeds, n = d.shape
    mean = float(d.mean()) if d.size else math.nan
    if n < 2 or not np.isfinite(d).all():
        return Interval(mean, math.nan, math.nan, math.nan, math.nan, n_seeds, n)
    material_term = float(np.var(d.mean(axis=0), ddof=1)) / n
    terms = [(material_term, n - 1)]
    if n_seeds > 1:
        terms.append((float(np.var(d.mean(axis=1), ddof=1)) / n_seeds, n_seeds - 1))
    variance = sum(v for v, _ in terms)
    if variance == 0:
        return Interval(mean, mean, mean, 0.0, math.inf, n_seeds, n)
    df = variance**2 / sum(v**2 / k for v, k in terms)
    half = _t_quantile(level, df) * math.sqrt(variance)
    return Interval(mean, mean - half, mean + half, math.sqrt(variance), df, n_seeds, n)


def below(errors: np.ndarray, reference_errors: np.ndarray, level: float = LEVEL) -> Interval:
    """Paired interval of mean |errors| - mean |reference_errors| ([S, n] or [n] each, the same materials)."""
    return paired_interval(np.abs(np.asarray(errors, dtype=np.float64))
                           - np.abs(np.asarray(reference_errors, dtype=np.float64)), level)
