"""End to end: the README's "Your own data" followed word for word on a hard folder, through every stage.

The 24 real JARVIS structures of examples/make_example_folder.py, rewritten as a user's own folder
at its hardest (issue 23): POSCAR files at the top, CIF files in `cif/`, extended XYZ in `xyz/`, and an
id_prop.csv as Excel's "CSV UTF-8" writes it (byte-order mark, CRLF line ends) with a header, a
`split` column with empty cells and one empty value. The shipped config/example_folder.yaml is copied
with `root_dir` (relative to the working directory) and the targets changed, as the README says, merged
over config.yaml with `--configfile`, shrunk to 1 epoch of a 16-wide model and 1 describe shard.
Checks the table, the report, a prediction with the trained runs on the folder, that the leaderboard
export says it does not apply, and that a changed structure file reruns download and what follows.
"""

from __future__ import annotations

import codecs
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
from crys_pipeline.sources import folder

pytestmark = pytest.mark.slow

RUN = "results/train/my_crystals/formation_energy_peratom/{variant}/full/seed0"
EXTRA_TABLES = {
    "table5": {"source": "my_crystals", "targets": "all", "variants": ["cgcnn", "megnet", "crysmmnet_gatgnn"],
               "regime": "full"},
    "table6": {"source": "my_crystals", "targets": "all", "variants": ["crysmmnet_global", "crysmmnet_local"],
               "regime": "full"},
}


LABELS = ("train",) * 5 + ("val", "test", "")  # cycled over the rows: 15 train, 3 val, 3 test, 3 without a label
EMPTY_VALUE = 8  # the row whose value cell is empty (a train row)


def make_own_data(root: Path) -> list[list[str]]:
    """The hard folder of the module docstring; returns its table rows (file, value, split)."""
    import ase.io
    from pymatgen.io.ase import AseAtomsAdaptor
    from pymatgen.io.cif import CifWriter

    writers = (("{}.vasp", lambda s, path: s.to(filename=str(path), fmt="poscar")),
               ("cif/{}.cif", lambda s, path: CifWriter(s).write_file(path)),
               ("xyz/{}.xyz", lambda s, path: ase.io.write(path, AseAtomsAdaptor.get_atoms(s), format="extxyz")))
    (root / "cif").mkdir(parents=True)
    (root / "xyz").mkdir()
    rows = []
    for index, (name, value) in enumerate(make_example(root, 24)):
        structure = folder.read_structure(root / name, "auto")
        (root / name).unlink()
        pattern, write = writers[index % len(writers)]
        rows.append([pattern.format(Path(name).stem), "" if index == EMPTY_VALUE else repr(value),
                     LABELS[index % len(LABELS)]])
        write(structure, root / rows[-1][0])
    text = "".join(",".join(r) + "\r\n" for r in [["file", "formation_energy_peratom", "split"], *rows])
    (root / "id_prop.csv").write_bytes(codecs.BOM_UTF8 + text.encode())
    return rows


def crys_pipeline(work: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run([str(Path(sys.executable).parent / "crys-pipeline"), *args], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory after table1, table5, table6 and the report on the hard folder."""
    work = tmp_path_factory.mktemp("folder_e2e")
    make_own_data(work / "my_crystals")
    overlay = yaml.safe_load((REPO / "config" / "example_folder.yaml").read_text())
    overlay["sources"]["my_crystals"].update(root_dir="my_crystals", targets={  # the README: change these two
        "formation_energy_peratom": {"field": "formation_energy_peratom", "unit": "eV/atom"}})
    overlay["tables"].update(EXTRA_TABLES)
    overlay.update(describe={"shards": 1}, graphs={"shard_size": 8}, train={"epochs": 1, "batch_size": 8},
                   model={"hidden_features": 16, "alignn_layers": 1, "gcn_layers": 1})
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
    lines = (finished_run / "my_crystals" / "id_prop.csv").read_text("utf-8-sig").splitlines()[1:]
    names = [line.split(",")[0] for line in lines]  # table order, subfolder names as written
    assert structures.column("material_id").to_pylist() == names
    assert {Path(n).suffix for n in names} == {".vasp", ".cif", ".xyz"} and lines[0].endswith(",train")
    split = io.read_json(res / "splits/my_crystals/formation_energy_peratom/full.json")
    assert (split["n_train"], split["n_val"], split["n_test"]) == (14, 3, 3)  # no label: in none; no value: left out
    log = (finished_run / "logs/ingest/my_crystals.log").read_text()
    assert "my_crystals: 24 entries, 24 selected, 24 kept, 0 rejected" in log
    assert "my_crystals: 3 of 24 rows of id_prop.csv have no split label" in log
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
    runs = RUN.format(variant="crysmmnet")
    result = crys_pipeline(finished_run, "predict", "--model", runs, "my_crystals/", "--out", "pred.csv")  # README
    assert result.returncode == 0, result.stdout + result.stderr
    with open(finished_run / "pred.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    with open(finished_run / "my_crystals" / "id_prop.csv", newline="", encoding="utf-8-sig") as handle:
        listed = {row["file"] for row in csv.DictReader(handle)}
    assert {r["id"] for r in rows} == listed  # every file, subfolders included, under the id_prop.csv name
    assert {"cif", "xyz"} <= {name.split("/")[0] for name in listed}
    assert all(r["mean"] not in ("", "nan") for r in rows), rows


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
