"""End to end: the shipped example folder (ALIGNN's id_prop.csv convention) through every stage.

24 real JARVIS structures written by examples/make_example_folder.py (POSCAR and CIF), the shipped
config/example_folder.yaml overlay merged over config.yaml with `--configfile` exactly as the README
documents, shrunk to 1 epoch of a 16-wide model and 1 describe shard. Checks the table, the report, a
prediction with the trained runs on files of the folder, that the leaderboard export says it does not
apply, and that a changed structure file reruns download and what follows.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, snakemake_in
from test_folder import make_example

from crys_pipeline import io

pytestmark = pytest.mark.slow

RUN = "results/train/my_crystals/formation_energy_peratom/{variant}/full/seed0"
EXTRA_TABLES = {
    "table5": {"source": "my_crystals", "targets": "all", "variants": ["cgcnn", "megnet", "crysmmnet_gatgnn"],
               "regime": "full"},
    "table6": {"source": "my_crystals", "targets": "all", "variants": ["crysmmnet_global", "crysmmnet_local"],
               "regime": "full"},
}


def crys_pipeline(work: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run([str(Path(sys.executable).parent / "crys-pipeline"), *args], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory after table1, table5, table6 and the report on the example folder."""
    work = tmp_path_factory.mktemp("folder_e2e")
    make_example(work / "my_crystals", 24)
    overlay = yaml.safe_load((REPO / "config" / "example_folder.yaml").read_text())
    overlay["sources"]["my_crystals"]["root_dir"] = str(work / "my_crystals")
    overlay["tables"].update(EXTRA_TABLES)
    overlay.update(describe={"shards": 1}, graphs={"shard_size": 8},
                   train={"epochs": 1, "batch_size": 8, "hidden_features": 16, "alignn_layers": 1, "gcn_layers": 1})
    (work / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    result = snakemake_in(work, "--cores", "2", "results/table1.csv", "results/table5.csv", "results/table6.csv",
                          "results/report.md", "--configfile", "overlay.yaml", timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    return work


def test_every_row_of_the_folder_reaches_the_tables_and_report(finished_run: Path) -> None:
    res = finished_run / "results"
    structures = io.read_parquet(res / "structures/my_crystals.parquet", "structures")
    rejected = io.read_parquet(res / "structures/my_crystals.rejected.parquet", "rejected")
    assert structures.num_rows == 24 and rejected.num_rows == 0
    ids = sorted(structures.column("material_id").to_pylist())
    graphs = io.read_graph_dir(res / "graphs/my_crystals")
    assert sorted(graphs.column("material_id").to_pylist()) == ids
    emb_ids, _, _ = io.read_embeddings(res / "embeddings/my_crystals.h5", "full")
    assert sorted(emb_ids) == ids
    with open(res / "table1.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["source"], r["property"], r["variant"]) for r in rows} == {
        ("my_crystals", "formation_energy_peratom", v) for v in ("crysmmnet", "alignn", "crystextnet")}
    assert all(float(r["mae_mean"]) > 0 and r["paper_mae"] in ("", "nan") for r in rows)
    for table, block in EXTRA_TABLES.items():
        with open(res / f"{table}.csv", newline="") as handle:
            assert sorted(r["variant"] for r in csv.DictReader(handle)) == sorted(block["variants"])
    assert "my_crystals" in (res / "report.md").read_text()


def test_predict_with_runs_trained_on_the_folder(finished_run: Path) -> None:
    files = sorted((finished_run / "my_crystals").glob("*.cif"))[:1] + sorted((finished_run / "my_crystals")
                                                                               .glob("*.vasp"))[:1]
    result = crys_pipeline(finished_run, "predict", "--model", RUN.format(variant="crysmmnet"), *map(str, files),
                           "--out", "pred.csv")
    assert result.returncode == 0, result.stdout + result.stderr
    with open(finished_run / "pred.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and all(r["mean"] not in ("", "nan") for r in rows), rows


def test_leaderboard_export_says_it_does_not_apply(finished_run: Path) -> None:
    result = crys_pipeline(finished_run, "export-leaderboard", RUN.format(variant="crysmmnet"))
    assert result.returncode != 0
    assert "my_crystals/formation_energy_peratom has no JARVIS-Leaderboard benchmark, so the leaderboard export " \
           "does not apply (it never does to a folder source" in result.stderr


def test_a_changed_structure_file_reruns_download_and_what_follows(finished_run: Path) -> None:
    assert "Nothing to be done" in snakemake_in(finished_run, "-n", "results/table1.csv", "--configfile",
                                                "overlay.yaml").stdout
    changed = min((finished_run / "my_crystals").glob("*.vasp"))
    changed.write_text(changed.read_text() + "\n")
    result = snakemake_in(finished_run, "-n", "results/table1.csv", "--configfile", "overlay.yaml")
    assert result.returncode == 0, result.stderr
    assert "download" in result.stdout and "ingest" in result.stdout and "train" in result.stdout
