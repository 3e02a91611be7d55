"""End to end: a tiny real-data config through every stage to all six tables and the fusion table (slow; CI).

A few dozen real JARVIS and MP structures (the ../shared/data tiny files as the local snapshot), the
offline text model, 2 epochs of a small model. Checks every artifact against its schema and that every
input id is accounted for at every stage, then that a second run does nothing.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import default_config, snakemake_in, tiny_snapshot_dir

from crys_pipeline import io

pytestmark = pytest.mark.slow

SUBSET = {"train": 12, "val": 4, "test": 4}
TABLE5 = ["cgcnn", "crysmmnet_cgcnn", "megnet", "crysmmnet_megnet", "gatgnn", "crysmmnet_gatgnn"]
FUSION = ["alignn", "crysmmnet", "crysmmnet_film", "crysmmnet_xattn"]


def tiny_config(snapshot: Path) -> dict:
    """The default config shrunk to a few dozen structures, 2 epochs and a small model."""
    cfg = default_config()
    for source in cfg["sources"].values():
        source.update(snapshot_dir=str(snapshot), subset=dict(SUBSET))
    cfg["describe"].update(shards=2, timeout_s=60)
    cfg["graphs"]["shard_size"] = 8
    cfg["model"].update(hidden_features=16, alignn_layers=1, gcn_layers=1)
    cfg["train"].update(epochs=2, batch_size=8, seeds=[0, 1])
    jarvis = {"source": "jarvis_dft_3d_2021", "regime": "full"}
    cfg["tables"] = {
        "table1": {**jarvis, "targets": ["formation_energy_peratom"], "variants": ["crysmmnet", "alignn"]},
        "table2": {"source": "mp_2018", "regime": "full", "targets": ["e_form", "log10_k_vrh"],
                   "variants": ["crysmmnet"]},
        "table3": {**jarvis, "regime": "low20", "targets": ["formation_energy_peratom"], "variants": ["crysmmnet"]},
        "table4": {**jarvis, "targets": ["formation_energy_peratom"], "variants": ["crystextnet"]},
        "table5": {**jarvis, "targets": ["formation_energy_peratom"], "variants": TABLE5},
        "table6": {**jarvis, "targets": ["formation_energy_peratom"],
                   "variants": ["crysmmnet_global", "crysmmnet_local"]},
        "fusion": {**jarvis, "targets": ["formation_energy_peratom"], "variants": FUSION},
    }
    return cfg


def run_snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """snakemake on the repository's Snakefile with `workdir` (holding its config.yaml) as working directory."""
    return snakemake_in(workdir, "--cores", "2", *args, timeout=1800)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory after `snakemake all` on the tiny config."""
    work = tmp_path_factory.mktemp("e2e")
    snapshot = tiny_snapshot_dir(work / "snapshot")
    (work / "config.yaml").write_text(yaml.safe_dump(tiny_config(snapshot)))
    result = run_snakemake(work, "all")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    return work


def _ids(table) -> list[str]:
    return table.column("material_id").to_pylist()


@pytest.mark.parametrize("source", ["jarvis_dft_3d_2021", "mp_2018"])
def test_every_input_id_is_accounted_for_at_every_stage(finished_run: Path, source: str) -> None:
    res = finished_run / "results"
    structures = io.read_parquet(res / f"structures/{source}.parquet", "structures")
    rejected = io.read_parquet(res / f"structures/{source}.rejected.parquet", "rejected")
    selected = io.read_meta(res / f"structures/{source}.parquet")["n_selected"]
    assert structures.num_rows + rejected.num_rows == selected == sum(SUBSET.values())
    ids = set(_ids(structures))
    descriptions = io.read_parquet(res / f"text/{source}/descriptions.parquet", "descriptions")
    sections = io.read_parquet(res / f"text/{source}/sections.parquet", "sections")
    assert sorted(_ids(descriptions)) == sorted(ids) == sorted(_ids(sections))
    emb_ids, matrix, _ = io.read_embeddings(res / f"embeddings/{source}.h5", "full")
    assert sorted(emb_ids) == sorted(ids) and matrix.shape[0] == len(ids)
    graphs = io.read_graph_dir(res / f"graphs/{source}")
    assert sorted(_ids(graphs)) == sorted(ids)


def test_runs_account_for_their_split(finished_run: Path) -> None:
    res = finished_run / "results"
    summaries = sorted(res.glob("train/*/*/*/*/seed*/summary.json"))
    assert summaries
    for path in summaries:
        summary = io.read_json(path)
        split = io.read_json(res / "splits" / summary["source"] / summary["target"] / f"{summary['regime']}.json")
        assert summary["split_hash"] == split["hash"]
        n_split = split["n_train"] + split["n_val"] + split["n_test"]
        assert summary["n_train"] + summary["n_val"] + summary["n_test"] + len(summary["dropped"]) == n_split
        predictions = io.read_parquet(path.parent / "predictions.parquet", "predictions")
        assert set(_ids(predictions)) <= set(split["id_train"] + split["id_val"] + split["id_test"])


def test_all_six_tables_and_second_run_does_nothing(finished_run: Path) -> None:
    import csv

    for n in range(1, 7):
        with open(finished_run / f"results/table{n}.csv") as handle:
            rows = list(csv.DictReader(handle))
        assert rows, f"table{n} is empty"
        assert all(row["mae_mean"] not in ("", "nan") for row in rows)
        assert (finished_run / f"results/table{n}.md").read_text().count("|") > 10
        if n == 5:
            assert [row["variant"] for row in rows] == TABLE5 and all(row["paper_mae"] for row in rows)
    with open(finished_run / "results/fusion.csv") as handle:
        fusion = list(csv.DictReader(handle))
    assert {row["variant"] for row in fusion} == set(FUSION) and all(row["verdict"] for row in fusion)
    assert (finished_run / "results/fusion.md").read_text().startswith("## Fusion beyond one [CLS] vector")
    again = run_snakemake(finished_run, "all", "-n")
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr
