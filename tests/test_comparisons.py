"""Tests of crys_pipeline.comparisons: paired comparisons of real-format run folders, verdicts and sentences."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_tables import JARVIS, UNITS, make_run

from crys_pipeline import cli, evidence
from crys_pipeline.comparisons import COLUMNS, build_comparisons, conclusions, read_comparisons

SPEC = {"source": JARVIS, "targets": ["mbj_bandgap", "bulk_modulus_kv"], "variants": ["crysmmnet", "alignn",
        "crystextnet"], "regime": "full"}
#: test-split errors (4 materials) per (target, variant); train and val rows get 0.1.
TEST_ERRORS = {
    ("mbj_bandgap", "crysmmnet"): [0.10, -0.12, 0.09, -0.11],   # clearly below alignn's
    ("mbj_bandgap", "alignn"): [0.50, -0.61, 0.55, -0.48],
    ("mbj_bandgap", "crystextnet"): [0.52, -0.58, 0.49, -0.60],  # ~ alignn's: not resolved
    ("bulk_modulus_kv", "crysmmnet"): [9.0, -31.0, 2.0, -20.0],
    ("bulk_modulus_kv", "alignn"): [8.0, -5.0, 1.0, -3.0],       # alignn lower, but one material dominates
    ("bulk_modulus_kv", "crystextnet"): [30.0, -32.0, 28.0, -31.0],
}


def grid(root: Path, seeds: tuple[int, ...] = (0, 1, 2)) -> list[Path]:
    """Every cell of SPEC with `seeds`; seed s shifts every test error by 2 % per seed (seed-to-seed spread)."""
    runs = []
    for (target, variant), errs in TEST_ERRORS.items():
        for s in seeds:
            errors = [0.1] * 20 + [e * (1 + 0.02 * s) for e in errs]
            runs.append(make_run(root, target, variant, s, float(np.mean(np.abs(errors[20:]))), errors=errors))
    return runs


def test_each_pair_of_the_table_is_compared_per_property(tmp_path: Path) -> None:
    rows = build_comparisons({"table1": SPEC}, units={JARVIS: UNITS}, runs=grid(tmp_path),
                             out_csv=tmp_path / "comparisons.csv")
    assert [(r["variant"], r["reference"], r["property"]) for r in rows] == [
        ("crysmmnet", "alignn", "mbj_bandgap"), ("crysmmnet", "alignn", "bulk_modulus_kv"),
        ("crystextnet", "alignn", "mbj_bandgap"), ("crystextnet", "alignn", "bulk_modulus_kv"),
        ("crysmmnet", "crystextnet", "mbj_bandgap"), ("crysmmnet", "crystextnet", "bulk_modulus_kv")]
    first = rows[0]
    seeds = np.array([1.0, 1.02, 1.04])[:, None]
    a = np.abs(TEST_ERRORS[("mbj_bandgap", "crysmmnet")]) * seeds
    b = np.abs(TEST_ERRORS[("mbj_bandgap", "alignn")]) * seeds
    ref = evidence.paired_interval(a - b)
    assert (first["n_seeds"], first["n_test"], first["unit"], first["question"]) == (3, 4, "eV", "text added to ALIGNN")
    assert first["diff"] == pytest.approx(a.mean() - b.mean())
    assert first["rel_diff"] == pytest.approx((a.mean() - b.mean()) / b.mean())
    assert (first["ci_low"], first["ci_high"]) == (pytest.approx(ref.low), pytest.approx(ref.high))
    assert first["rel_ci_high"] == pytest.approx(ref.high / b.mean())
    verdicts = [(r["property"], r["variant"], r["reference"], r["verdict"]) for r in rows]
    assert ("mbj_bandgap", "crysmmnet", "alignn", "lower") in verdicts
    assert ("mbj_bandgap", "crystextnet", "alignn", "not resolved") in verdicts
    # bulk modulus: alignn's point estimate is 4x lower, but one material carries the difference
    bulk = rows[1]
    assert bulk["diff"] > 0 and bulk["verdict"] == "not resolved"
    for row in rows:  # the verdict is read from the interval alone
        expected = "lower" if row["ci_high"] < 0 else "higher" if row["ci_low"] > 0 else "not resolved"
        assert row["verdict"] == expected
    assert read_comparisons(tmp_path / "comparisons.csv")[0]["ci_low"] == pytest.approx(first["ci_low"])


def test_sentences_count_verdicts_and_name_the_properties(tmp_path: Path) -> None:
    rows = build_comparisons({"table1": SPEC}, units={JARVIS: UNITS}, runs=grid(tmp_path),
                             out_csv=tmp_path / "comparisons.csv")
    sentences = conclusions(read_comparisons(tmp_path / "comparisons.csv"))
    assert sentences[0] == (
        "table1, text added to ALIGNN (crysmmnet vs alignn, full, 3 seeds, 4 test materials): lower mean MAE on 1 "
        "of 2 properties; by the 95 % interval lower on 1 (mbj_bandgap), higher on 0, not resolved on 1 "
        "(bulk_modulus_kv).")
    assert len(sentences) == 3 and sentences == conclusions(rows)


def test_one_seed_interval_says_it_covers_test_materials_only(tmp_path: Path) -> None:
    rows = build_comparisons({"table1": SPEC}, units={JARVIS: UNITS}, runs=grid(tmp_path, seeds=(0,)),
                             out_csv=tmp_path / "c.csv")
    assert {r["n_seeds"] for r in rows} == {1} and all("test materials only" in r["interval"] for r in rows)


def test_cli_writes_the_csv_and_fails_on_a_missing_cell(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    runs = [str(p) for p in grid(tmp_path)]
    args = ["comparisons", "--specs", json.dumps({"table4": SPEC}), "--units", json.dumps({JARVIS: UNITS}),
            "--out-csv", str(tmp_path / "out/comparisons.csv")]
    assert cli.main([*args, *runs]) == 0
    header = (tmp_path / "out/comparisons.csv").read_text().splitlines()[0]
    assert header == ",".join(COLUMNS)
    without = [r for r in runs if "/crystextnet/" not in r or "bulk_modulus_kv" not in r]
    (tmp_path / "out/comparisons.csv").unlink()
    assert cli.main([*args, *without]) == 1
    assert "table4: no runs given for bulk_modulus_kv / ['crystextnet']" in caplog.text
    assert not (tmp_path / "out/comparisons.csv").exists()
