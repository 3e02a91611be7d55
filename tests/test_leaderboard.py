"""Tests for `crys-pipeline export-leaderboard` on a real (small) training run with official split ids."""

from __future__ import annotations

import csv
import io as stdio
import zipfile
from pathlib import Path

import pytest
from train_helpers import build_graph_dir, ingest_first, write_split

from crys_pipeline import io, leaderboard, train
from crys_pipeline.cli import main
from crys_pipeline.settings import ModelSettings
from crys_pipeline.splits import official_split

TARGET = "formation_energy_peratom"


@pytest.fixture(scope="module")
def official_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-epoch ALIGNN on the first 60 real JARVIS crystals, split by their official labels."""
    work = tmp_path_factory.mktemp("leaderboard")
    structures = ingest_first(60, work)
    rows = io.read_parquet(structures, "structures").to_pylist()
    split = official_split([r["material_id"] for r in rows], [r[f"split_{TARGET}"] for r in rows])
    assert split["id_test"], "the first 60 records hold official test materials"
    path = write_split(work / "split.json", TARGET, split["id_train"], split["id_val"], split["id_test"])
    out = work / "run"
    cfg = train.TrainConfig(target=TARGET, variant="alignn", seed=0, epochs=2, batch_size=8, device="cpu", threads=1,
                            model=ModelSettings(hidden_features=16, alignn_layers=1, gcn_layers=1))
    train.train(structures, split=path, graphs=build_graph_dir(structures, work / "graphs"), embeddings=None,
                out_dir=out, cfg=cfg)
    return out


def test_export_writes_the_contribution_format(official_run: Path, tmp_path: Path) -> None:
    code = main(["export-leaderboard", str(official_run), "--out-dir", str(tmp_path), "--author-email", "a@b.c"])
    assert code == 0
    name = f"AI-SinglePropertyPrediction-{TARGET}-dft_3d-test-mae.csv"
    with zipfile.ZipFile(tmp_path / f"{name}.zip") as zf:
        assert zf.namelist() == [name]
        rows = list(csv.DictReader(stdio.StringIO(zf.read(name).decode())))
    preds = [r for r in io.read_parquet(official_run / "predictions.parquet", "predictions").to_pylist()
             if r["split"] == "test"]
    assert [r["id"] for r in rows] == [p["material_id"] for p in preds]
    assert [float(r["prediction"]) for r in rows] == pytest.approx([p["prediction"] for p in preds])
    assert {r["id"] for r in rows} <= leaderboard.benchmark_test_ids(f"dft_3d_{TARGET}")
    meta = io.read_json(tmp_path / "metadata.json", checked=False)  # a file for the leaderboard: no checksum key
    assert meta["model_name"] == "CrysMMNet-alignn" and meta["author_email"] == "a@b.c"
    assert meta["database_version"] == "8-18-2021"


def test_export_refuses_foreign_split_and_targets_without_benchmark(official_run: Path, tmp_path: Path) -> None:
    summary = io.read_json(official_run / "summary.json")
    bad = tmp_path / "moduli"
    bad.mkdir()
    io.write_json({**summary, "source": "mp_2018", "target": "log10_k_vrh"}, bad / "summary.json")
    with pytest.raises(ValueError, match="no JARVIS-Leaderboard benchmark"):
        leaderboard.export_leaderboard(bad, out_dir=tmp_path / "out")
    table = io.read_parquet(official_run / "predictions.parquet", "predictions")
    train_id = next(r["material_id"] for r in table.to_pylist() if r["split"] == "train")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    io.write_json(summary, foreign / "summary.json")
    rows = [{**r, "split": "test"} if r["material_id"] == train_id else r for r in table.to_pylist()]
    import pyarrow as pa

    io.write_parquet(pa.Table.from_pylist(rows, schema=table.schema), foreign / "predictions.parquet",
                     kind="predictions", params={}, extra=io.read_meta(official_run / "predictions.parquet"))
    with pytest.raises(ValueError, match="not in the official"):
        leaderboard.export_leaderboard(foreign, out_dir=tmp_path / "out2")
