"""Stage `fusion`: results/fusion.csv and the report's fusion section, and the fusion variants in the DAG.

Run folders in the real format (tests/test_tables.make_run, real JARVIS tiny materials, designed errors) for the
rows, verdicts and generated sentences; snakemake dry runs of the offline default and the tiny overlay for the
DAG, and (slow) the tiny overlay's real run to results/fusion.csv and the report.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import default_config, snakemake_in, tiny_snapshot_dir
from test_tables import JARVIS, UNITS, make_run
from test_workflow import job_counts

from crys_pipeline import evidence, fusion
from crys_pipeline.report import build_report

VARIANTS = ["alignn", "crysmmnet", "crysmmnet_film", "crysmmnet_xattn"]
SPEC = {"source": JARVIS, "targets": ["mbj_bandgap", "bulk_modulus_kv"], "variants": VARIANTS, "regime": "full"}
#: test-split errors (4 materials) per (target, variant); train and val rows get 0.1.
TEST_ERRORS = {
    ("mbj_bandgap", "alignn"): [0.50, -0.61, 0.55, -0.48],
    ("mbj_bandgap", "crysmmnet"): [0.30, -0.32, 0.29, -0.31],
    ("mbj_bandgap", "crysmmnet_film"): [0.10, -0.12, 0.09, -0.11],  # clearly below crysmmnet's
    ("mbj_bandgap", "crysmmnet_xattn"): [0.31, -0.30, 0.30, -0.33],  # ~ crysmmnet's
    ("bulk_modulus_kv", "alignn"): [8.0, -5.0, 1.0, -3.0],
    ("bulk_modulus_kv", "crysmmnet"): [8.5, -5.5, 1.5, -2.5],
    ("bulk_modulus_kv", "crysmmnet_film"): [9.0, -31.0, 2.0, -20.0],
    ("bulk_modulus_kv", "crysmmnet_xattn"): [7.9, -5.2, 1.1, -2.9],
}


def grid(root: Path) -> list[Path]:
    """Every cell of SPEC with seeds 0-2; seed s scales every test error by 1 + 0.02 s."""
    return [make_run(root, target, variant, s, float(np.mean(np.abs(errs))),
                     errors=[0.1] * 20 + [e * (1 + 0.02 * s) for e in errs])
            for (target, variant), errs in TEST_ERRORS.items() for s in (0, 1, 2)]


@pytest.fixture
def built(tmp_path: Path) -> tuple[list[dict], Path]:
    out = tmp_path / "results"
    rows = fusion.build_fusion(SPEC, units=UNITS, runs=grid(tmp_path), out_csv=out / "fusion.csv",
                               out_md=out / "fusion.md")
    return rows, out


def test_rows_judge_each_variant_against_the_constant_and_each_pair(built: tuple[list[dict], Path]) -> None:
    rows, out = built
    keys = [(r["property"], r["variant"], r["reference"]) for r in rows]
    assert keys[:4] == [("mbj_bandgap", v, "constant") for v in VARIANTS]
    pairs = [k[1:] for k in keys if k[0] == "mbj_bandgap" and k[2] != "constant"]
    assert pairs == [("crysmmnet", "alignn"), ("crysmmnet_film", "crysmmnet"), ("crysmmnet_film", "alignn"),
                     ("crysmmnet_xattn", "crysmmnet"), ("crysmmnet_xattn", "alignn")]
    verdict = {k: r["verdict"] for k, r in zip(keys, rows, strict=True)}
    assert verdict[("mbj_bandgap", "crysmmnet_film", "crysmmnet")] == "lower"
    assert verdict[("mbj_bandgap", "crysmmnet_xattn", "crysmmnet")] == "not resolved"
    for row in rows:  # the verdict is read from the interval alone
        expected = "lower" if row["ci_high"] < 0 else "higher" if row["ci_low"] > 0 else "not resolved"
        assert row["verdict"] == expected and row["n_seeds"] == 3 and row["n_test"] == 4
    base = rows[2]  # film against the constant: the training median's test MAE on the same materials
    y = np.array([float(r["target"]) for r in _test_rows(built[1].parent, "mbj_bandgap")])
    median = np.median([float(r["target"]) for r in _train_rows(built[1].parent, "mbj_bandgap")])
    assert base["mae_reference"] == pytest.approx(np.mean(np.abs(median - y)))
    errs = np.abs(TEST_ERRORS[("mbj_bandgap", "crysmmnet_film")]) * np.array([1.0, 1.02, 1.04])[:, None]
    ref = evidence.paired_interval(errs - np.abs(median - y))
    assert (base["ci_low"], base["ci_high"]) == (pytest.approx(ref.low), pytest.approx(ref.high))
    assert fusion.read_fusion(out / "fusion.csv")[2]["ci_high"] == pytest.approx(base["ci_high"])


def _rows(root: Path, target: str, split: str) -> list[dict]:
    from crys_pipeline import io

    path = root / "results/train" / JARVIS / target / "alignn/full/seed0/predictions.parquet"
    return [r for r in io.read_parquet(path, "predictions").to_pylist() if r["split"] == split]


def _test_rows(root: Path, target: str) -> list[dict]:
    return _rows(root, target, "test")


def _train_rows(root: Path, target: str) -> list[dict]:
    return _rows(root, target, "train")


def test_section_is_generated_from_the_rows(built: tuple[list[dict], Path]) -> None:
    rows, out = built
    md = (out / "fusion.md").read_text()
    assert md.startswith("## Fusion beyond one [CLS] vector")
    assert "A gain over CrysMMNet is resolved for crysmmnet_film on mbj_bandgap" in md
    over = [r for r in rows if r["reference"] == "crysmmnet" and r["variant"].startswith("crysmmnet_")]
    assert f"call a gain in about {0.025 * len(over):.1f} of {len(over)} comparisons by chance" in md
    for sentence in fusion.conclusions(rows):
        assert sentence in md
    line = next(x for x in md.splitlines() if x.startswith("| mbj_bandgap | crysmmnet_film |"))
    film = next(r for r in rows if r["property"] == "mbj_bandgap" and r["variant"] == "crysmmnet_film"
                and r["reference"] == "crysmmnet")
    assert f"{100 * film['rel_diff']:+.1f} %" in line and "**lower**" in line


def test_no_gain_is_said_plainly(tmp_path: Path) -> None:
    spec = {**SPEC, "variants": ["alignn", "crysmmnet", "crysmmnet_xattn"]}
    rows = fusion.build_fusion(spec, units=UNITS, runs=grid(tmp_path), out_csv=tmp_path / "f.csv",
                               out_md=tmp_path / "f.md")
    assert fusion.gain_resolved(rows, ["crysmmnet_xattn"]).startswith(
        "No new variant resolves a gain over CrysMMNet at this scale (0 lower, 0 higher, 2 not resolved over 2 "
        "comparisons)")


def _cross_summary(folder: Path, target: str) -> Path:
    """A cross-attention summary CSV in the layout of attention/cross.py."""
    from crys_pipeline.attention.cross import COLUMNS
    from crys_pipeline.attention.tagging import CATEGORIES, SECTION

    folder.mkdir(parents=True)
    (folder / "materials").mkdir()
    (folder / "materials" / "JVASP-1.png").write_bytes(b"")
    with open(folder / "summary.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for i, cat in enumerate(CATEGORIES):
            writer.writerow({"target": target, "variant": "crysmmnet_xattn", "seed": 0, "category": cat,
                             "section": SECTION[cat], "n_materials": 4, "share_mean": 0.05, "share_std": 0.01,
                             "content_share_mean": "" if cat == "special" else 0.01 * (i + 1),
                             "token_fraction_mean": "" if cat == "special" else 0.08, "enrichment": ""})
    return folder / "summary.csv"


def test_report_includes_the_section_with_the_attention_shares(tmp_path: Path) -> None:
    runs = grid(tmp_path)
    res = tmp_path / "results"
    cross = [_cross_summary(res / f"fusion/attention/{JARVIS}/{t}/crysmmnet_xattn/full/seed0", t)
             for t in SPEC["targets"]]
    fusion.build_fusion(SPEC, units=UNITS, runs=runs, out_csv=res / "fusion.csv", out_md=res / "fusion.md",
                        cross_attention=cross)
    from crys_pipeline.comparisons import build_comparisons

    build_comparisons({"fusion": SPEC}, units={JARVIS: UNITS}, runs=runs, out_csv=res / "comparisons.csv")
    build_report([], comparisons=res / "comparisons.csv", summaries=runs, out_md=res / "report.md",
                 fig_dir=res / "report", fusion=res / "fusion.md")
    md = (res / "report.md").read_text()
    assert (res / "fusion.md").read_text().strip() in md
    assert "| site | 8.0 | 7.0 | 7.0 |" in md and "[JVASP-1](fusion/attention/" in md


def test_dry_run_plans_the_fusion_table_on_the_offline_default(tmp_path: Path) -> None:
    result = snakemake_in(tmp_path, "-n", "results/fusion.csv")
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout)
    cfg = default_config()
    block = cfg["tables"]["fusion"]
    n_targets, n_seeds = len(cfg["sources"][JARVIS]["targets"]), len(cfg["train"]["seeds"])
    assert counts["train"] == n_targets * len(block["variants"]) * n_seeds == 90
    assert counts["tokens"] == 1 and counts["cross_attention"] == n_targets and counts["fusion"] == 1
    assert "results/tokens/jarvis_dft_3d_2021.h5" in result.stdout
    graph_only = snakemake_in(tmp_path / "b", "-n", f"results/train/{JARVIS}/mbj_bandgap/crysmmnet_film/full/seed0/"
                              "summary.json")
    assert "tokens" not in job_counts(graph_only.stdout)  # FiLM reads the [CLS] vector only


@pytest.mark.slow
def test_tiny_config_runs_the_new_variants_to_the_fusion_table_and_report(tmp_path: Path) -> None:
    """The tiny overlay's real DAG: tokens, every variant of the fusion table, cross-attention, fusion, report."""
    cfg = default_config("config/tiny.yaml")
    snapshot = tiny_snapshot_dir(tmp_path / "snapshot")
    for source in cfg["sources"].values():
        source["snapshot_dir"] = str(snapshot)
    cfg["report"]["tables"] = ["table1", "fusion"]
    result = snakemake_in(tmp_path / "w", "--cores", "2", "results/fusion.csv", "results/report.md", config=cfg,
                          timeout=3000)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    res = tmp_path / "w/results"
    rows = fusion.read_fusion(res / "fusion.csv")
    assert {r["variant"] for r in rows} == set(cfg["tables"]["fusion"]["variants"])
    assert all(r["verdict"] in evidence.VERDICTS for r in rows)
    figures = list((res / f"fusion/attention/{JARVIS}").glob("*/crysmmnet_xattn/full/seed0/materials/*.png"))
    assert len(figures) == 2 * cfg["attention"]["cross_materials"]
    assert (res / "fusion.md").read_text().strip() in (res / "report.md").read_text()
