"""Tests for `crys-pipeline predict` on structure files written from real JARVIS / MP structures."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from train_helpers import build_graph_dir, ingest_first, mp_text_dataset, structure_ids, write_split

from crys_pipeline import io, predict, splits, train
from crys_pipeline.cli import main
from crys_pipeline.ingest import row_to_structure
from crys_pipeline.settings import ModelSettings, SplitSettings
from crys_pipeline.sources.folder import read_structure

TARGET = "formation_energy_peratom"
SMALL = {"model": ModelSettings(hidden_features=16, alignn_layers=1, gcn_layers=1), "batch_size": 8, "epochs": 2,
         "device": "cpu", "threads": 1}


def _official_split(structures: Path, target: str, work: Path) -> Path:
    """The `splits` stage's full split of `target` (official labels): the run records its unit and domain."""
    splits.make_splits(structures, target=target, method="official", settings=SplitSettings(),
                       out_full=work / f"{target}.full.json", out_low20=work / f"{target}.low20.json")
    return work / f"{target}.full.json"


@pytest.fixture(scope="module")
def alignn_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two seeds of a small ALIGNN on the first 40 real JARVIS crystals (official split 33 / 3 / 4), their
    structures table and graphs."""
    work = tmp_path_factory.mktemp("predict")
    structures = ingest_first(40, work)
    graphs = build_graph_dir(structures, work / "graphs")
    split = _official_split(structures, TARGET, work)
    runs = []
    for seed in (0, 1):
        out = work / f"seed{seed}"
        train.train(structures, split=split, graphs=graphs, embeddings=None, out_dir=out,
                    cfg=train.TrainConfig(target=TARGET, variant="alignn", seed=seed, **SMALL))
        runs.append(out)
    return {"work": work, "structures": structures, "graphs": graphs, "runs": runs,
            "test_ids": io.read_json(split)["id_test"]}


def _write_inputs(structures: Path, ids: list[str], folder: Path) -> dict[str, str]:
    """POSCAR files of `ids` (`POSCAR-<id>` and `<id>.vasp` alternately); returns {file name: material id}."""
    rows = {r["material_id"]: r for r in io.read_parquet(structures, "structures").to_pylist()}
    folder.mkdir(parents=True, exist_ok=True)
    names = {}
    for i, mid in enumerate(ids):
        structure = row_to_structure(rows[mid])
        name = f"{mid}.vasp" if i % 2 else f"POSCAR-{mid}"
        structure.to(filename=str(folder / name), fmt="poscar")
        names[name] = mid
    return names


def test_predictions_of_written_files_equal_the_runs_own_predictions(alignn_runs: dict) -> None:
    folder = alignn_runs["work"] / "inputs"
    names = _write_inputs(alignn_runs["structures"], alignn_runs["test_ids"], folder)
    crystals, table = predict.predict_files(alignn_runs["runs"], paths=[folder])
    assert len(crystals) == 4 and not predict.has_failures(crystals)
    assert sorted(c.material_id for c in crystals) == sorted(names)  # the file name, suffix and all
    for run in alignn_runs["runs"]:
        own = {r["material_id"]: r["prediction"]
               for r in io.read_parquet(run / "predictions.parquet", "predictions").to_pylist()}
        for crystal in crystals:
            mid = names[crystal.material_id]
            assert crystal.predictions[f"alignn/full/{run.name}"] == pytest.approx(own[mid], abs=1e-4)
    first = crystals[0]
    values = list(first.predictions.values())
    assert first.material_id in table and f"{sum(values) / 2:.4f}" in table
    assert "alignn/full/seed0" in table and "alignn/full/seed1" in table and values[0] != values[1]


def test_malformed_file_gets_its_own_error_and_others_are_predicted(alignn_runs: dict, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    _write_inputs(alignn_runs["structures"], alignn_runs["test_ids"][:2], tmp_path)
    (tmp_path / "broken.cif").write_text("data_broken\n_cell_length_a 3.0\nloop_\n_atom_site_label\n")
    (tmp_path / "POSCAR-close").write_text("close atoms\n1.0\n4 0 0\n0 4 0\n0 0 4\nNa Cl\n1 1\nDirect\n"
                                           "0 0 0\n0.01 0 0\n")
    runs = [str(r) for r in alignn_runs["runs"]]
    code = main(["predict", "--model", *runs, str(tmp_path), "--out", str(tmp_path / "pred.csv")])
    out = capsys.readouterr().out
    assert code == 1
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "unreadable structure file" in lines["broken.cif"]
    assert "atoms closer than 0.5 A" in lines["POSCAR-close"]
    predicted = [line for mid, line in lines.items() if mid not in ("broken.cif", "POSCAR-close")]
    assert len(predicted) == 2 and all(" - " not in line for line in predicted)
    assert len((tmp_path / "pred.csv").read_text().splitlines()) == 5


def test_runs_of_different_targets_are_refused(alignn_runs: dict, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    meta = io.read_json(alignn_runs["runs"][0] / "model.json")
    io.write_json({**meta, "target": "mbj_bandgap"}, other / "model.json")
    (other / "model.pt").write_bytes((alignn_runs["runs"][0] / "model.pt").read_bytes())
    with pytest.raises(ValueError, match="different targets"):
        predict.predict_files([alignn_runs["runs"][0], other], paths=[tmp_path])


@pytest.mark.slow
def test_text_model_describes_and_embeds_new_files(tmp_path: Path) -> None:
    data = mp_text_dataset(tmp_path)
    ids = structure_ids(data["structures"], "e_form")
    split = write_split(tmp_path / "split.json", "e_form", ids[:12], ids[12:16], ids[16:20])
    run = tmp_path / "run"
    train.train(data["structures"], split=split, graphs=data["graphs"], embeddings=data["embeddings"],
                out_dir=run, cfg=train.TrainConfig(target="e_form", variant="crysmmnet", seed=0, **SMALL))
    _write_inputs(data["structures"], ids[:2], tmp_path / "inputs")
    crystals, _ = predict.predict_files([run], paths=[tmp_path / "inputs"])
    assert [c.error for c in crystals] == ["", ""]
    assert all(isinstance(c.predictions["crysmmnet/full/seed0"], float) for c in crystals)


def _copy_run(run: Path, dest: Path, **changes) -> Path:
    """A copy of a run folder whose model.json has `changes` (written with a valid checksum)."""
    dest.mkdir(parents=True)
    (dest / "model.pt").write_bytes((run / "model.pt").read_bytes())
    io.write_json({**io.read_json(run / "model.json"), **changes}, dest / "model.json")
    return dest


def test_runs_of_other_models_or_twice_the_same_seed_are_refused(alignn_runs: dict, tmp_path: Path) -> None:
    seed0 = alignn_runs["runs"][0]
    other = _copy_run(seed0, tmp_path / "crysmmnet" / "full" / "seed0", variant="crysmmnet")
    with pytest.raises(ValueError, match=r"different models .*\('alignn', 'full'\), \('crysmmnet', 'full'\)"):
        predict.predict_files([seed0, other], paths=[tmp_path])
    twin = _copy_run(seed0, tmp_path / "elsewhere" / "seed0")
    with pytest.raises(ValueError, match="are both alignn/full/seed0; give each seed once"):
        predict.predict_files([seed0, twin], paths=[tmp_path])


@pytest.mark.parametrize(("key", "value", "trained"), [("hidden_features", 32, 16), ("alignn_layers", 3, 1),
                                                     ("variant", "cgcnn", "alignn")])
def test_model_json_not_fitting_the_weights_is_one_line_naming_the_run_and_setting(
        alignn_runs: dict, tmp_path: Path, key: str, value, trained, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 23 case 10: an edited, re-signed model.json; one line, not one per mismatching tensor."""
    run = tmp_path / "seed0"
    _copy_run(alignn_runs["runs"][0], run)
    meta = io.read_json(run / "model.json")
    io.write_json({**meta, "config": {**meta["config"], key: value}}, run / "model.json")
    assert main(["predict", "--model", str(run), str(tmp_path)]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [f"{run}: model.json does not fit model.pt: model.json says {key}={value!r} but the weights "
                      f"were trained with {key}={trained!r}; restore the run's model.json, or delete the run folder "
                      "and retrain it"]


class _Marker:
    """Unpickling this writes a marker file: what a crafted model.pt would do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "code ran"))


def test_crafted_model_pt_is_refused_without_running_it(alignn_runs: dict, tmp_path: Path, caplog) -> None:
    import torch

    run = _copy_run(alignn_runs["runs"][0], tmp_path / "shared_run")
    marker = tmp_path / "marker"
    state = io.read_torch(run / "model.pt")
    torch.save({**state, "payload": _Marker(str(marker))}, run / "model.pt")
    io.write_json({**io.read_json(run / "model.json"), "model_sha256": io.sha256_file(run / "model.pt")},
                  run / "model.json")  # a consistent, hostile run folder
    _write_inputs(alignn_runs["structures"], alignn_runs["test_ids"][:1], tmp_path / "in")
    assert main(["predict", "--model", str(run), str(tmp_path / "in")]) == 1
    assert not marker.exists()
    assert any("model.pt: refused, it holds objects other than tensors" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda run: (run / "model.pt").write_bytes((run / "model.pt").read_bytes()[:-100]),
     "model.pt: corrupt or unreadable artifact .*sha256 differs"),
    (lambda run: io.write_json({k: v for k, v in io.read_json(run / "model.json").items() if k != "variant"},
                               run / "model.json"),
     r"model.json: key 'variant' is missing \(the run_model layout needs str\); delete it and rerun"),
    (lambda run: io.write_json({**io.read_json(run / "model.json"), "seed": "0"}, run / "model.json"),
     "model.json: key 'seed' is str, the run_model layout needs int"),
])
def test_damaged_run_files_are_named(alignn_runs: dict, tmp_path: Path, edit, message: str) -> None:
    run = _copy_run(alignn_runs["runs"][0], tmp_path / "run")
    edit(run)
    with pytest.raises(io.ArtifactError, match=message):
        predict.load_trained_model(run)


@pytest.fixture(scope="module")
def standardized_run(alignn_runs: dict) -> Path:
    """A small ALIGNN trained with `target_scaling: standardize` on the fixture's split."""
    work = alignn_runs["work"]
    out = work / "standardized" / "seed0"
    train.train(alignn_runs["structures"], split=work / f"{TARGET}.full.json", graphs=alignn_runs["graphs"],
                embeddings=None, out_dir=out, cfg=train.TrainConfig(target=TARGET, variant="alignn", seed=0,
                                                   target_scaling="standardize", **SMALL))
    return out


def test_standardized_run_round_trips_in_the_targets_unit(alignn_runs: dict, standardized_run: Path) -> None:
    """Trained on (y - mean) / std, stored with its scaling, predicted in eV/atom by the run and by `predict`."""
    import numpy as np

    meta = io.read_json(standardized_run / "model.json")
    rows = io.read_parquet(standardized_run / "predictions.parquet", "predictions").to_pylist()
    y_train = np.array([r["target"] for r in rows if r["split"] == "train"])
    scaling = meta["config"]["target_scaling"]
    assert scaling == {"method": "standardize", "shift": float(np.float32(y_train.mean())),
                       "scale": float(np.float32(y_train.std(ddof=1)))}
    assert meta["train_config"]["target_scaling"] == "standardize"
    state = io.read_torch(standardized_run / "model.pt")
    assert (float(state["target_scale.shift"]), float(state["target_scale.scale"])) == (scaling["shift"],
                                                                                        scaling["scale"])
    # predictions in the unit: their mean is the targets' to within one std, not the standardized scale's 0
    preds = np.array([r["prediction"] for r in rows if r["split"] == "train"])
    assert abs(preds.mean() - y_train.mean()) < y_train.std() and abs(preds.mean()) > 0.5
    summary = io.read_json(standardized_run / "summary.json")
    assert summary["target_scaling"] == "standardize"
    assert summary["train_mae"] == pytest.approx(np.mean(np.abs(preds - y_train)))
    folder = alignn_runs["work"] / "standardized_inputs"
    names = _write_inputs(alignn_runs["structures"], alignn_runs["test_ids"], folder)
    crystals, _ = predict.predict_files([standardized_run], paths=[folder])
    own = {r["material_id"]: r["prediction"] for r in rows}
    assert len(crystals) == len(names) == 4
    for crystal in crystals:
        assert crystal.predictions["alignn/full/seed0"] == pytest.approx(own[names[crystal.material_id]], abs=1e-4)


@pytest.mark.parametrize("config_edit", [
    lambda config: {k: v for k, v in config.items() if k != "target_scaling"},
    lambda config: {**config, "target_scaling": {"method": "none", "shift": 0.0, "scale": 1.0}},
])
def test_model_json_without_its_scaling_is_refused(standardized_run: Path, tmp_path: Path, config_edit) -> None:
    meta = io.read_json(standardized_run / "model.json")
    run = _copy_run(standardized_run, tmp_path / "seed0", config=config_edit(meta["config"]))
    with pytest.raises(ValueError, match=rf"{run}: model.pt holds the target scaling shift -?\d.*, scale .*, but "
                       "model.json records .*; the two files do not belong together"):
        predict.load_trained_model(run)


def test_element_beyond_the_feature_table_fails_its_file_only(alignn_runs: dict, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    """Issue 23 case 3: an Og file gets its own error naming the element; the valid files are predicted."""
    from pymatgen.core import Structure

    _write_inputs(alignn_runs["structures"], alignn_runs["test_ids"][:2], tmp_path)
    heavy = Structure.from_file(next(tmp_path.glob("*.vasp")))
    heavy.replace(0, "Og")
    heavy.to(filename=str(tmp_path / "heavy.vasp"), fmt="poscar")
    code = main(["predict", "--model", *map(str, alignn_runs["runs"]), str(tmp_path)])
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert code == 1 and len(lines) == 3
    assert lines["heavy.vasp"].endswith("element Og (Z=118) is beyond the atom-feature table of the graph models "
                                        "(Z <= 103, H to Lr)")
    assert all(" - " not in line for mid, line in lines.items() if mid != "heavy.vasp")


# --- what a user reads (issue 23 case 15) -----------------------------------------------------------

def _table_lines(out: str) -> tuple[str, dict[str, str]]:
    """(header, {id: line}) of the printed prediction table."""
    lines = out.splitlines()
    return lines[0], {line.split()[0]: line for line in lines[1:]}


def test_ids_are_file_names_that_join_with_id_prop_and_xyz_is_read(alignn_runs: dict, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture, caplog) -> None:
    """The header names the unit; ids keep the suffix and the subfolder, as the folder source's; extended XYZ as it
    reads it; hidden folders are left out."""
    import ase.io
    from pymatgen.io.ase import AseAtomsAdaptor
    from test_folder import make_example

    folder = tmp_path / "my_crystals"
    listed = [name for name, _ in make_example(folder, 4)]
    crystal = read_structure(folder / listed[0], "auto")
    (folder / "xyz").mkdir()
    ase.io.write(folder / "xyz" / "cell.xyz", AseAtomsAdaptor.get_atoms(crystal), format="extxyz")
    (folder / ".ipynb_checkpoints").mkdir()
    shutil.copy(folder / listed[0], folder / ".ipynb_checkpoints" / listed[0])
    (folder / "molecule.xyz").write_text("2\nno lattice\nH 0 0 0\nH 0 0 0.74\n")
    code = main(["predict", "--model", str(alignn_runs["runs"][0]), str(folder), "--out", str(tmp_path / "p.csv")])
    header, lines = _table_lines(capsys.readouterr().out)
    assert code == 1  # the molecule: its own error, the others predicted
    assert header.split()[:4] == ["id", "alignn/full/seed0", "mean", "[eV/atom]"]
    assert sorted(lines) == sorted([*listed, "xyz/cell.xyz", "molecule.xyz"])
    assert lines["molecule.xyz"].endswith("unreadable structure file: ValueError: an xyz file without a lattice "
                                          "(extended XYZ needs Lattice=\"...\" on line 2)")
    assert lines["xyz/cell.xyz"].split()[1] == lines[listed[0]].split()[1]  # the same crystal, the same prediction
    with open(tmp_path / "p.csv") as handle:
        assert {row["id"] for row in csv.DictReader(handle)} >= set(listed)  # joins with id_prop.csv's names
    assert f"{folder}: not read, not structure files by their name: id_prop.csv" in caplog.text


def test_an_empty_folder_is_an_error(alignn_runs: dict, tmp_path: Path, caplog) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a structure")
    assert main(["predict", "--model", str(alignn_runs["runs"][0]), str(tmp_path / "empty")]) == 1
    assert (f"{tmp_path / 'empty'}: no structure files in the folder or its subfolders (POSCAR*, CONTCAR*, *.vasp, "
            "*.poscar, *.cif, *.xyz, *.extxyz)") in caplog.text


def test_inputs_far_from_the_training_data_carry_a_note(alignn_runs: dict, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    """An isolated atom in a 30 A box and an element no training material has."""
    from pymatgen.core import Lattice, Structure

    domain = io.read_json(alignn_runs["runs"][0] / "model.json")["split"]["train_domain"]
    Structure(Lattice.cubic(30.0), ["Si"], [[0, 0, 0]]).to(filename=str(tmp_path / "POSCAR-isolated"), fmt="poscar")
    names = _write_inputs(alignn_runs["structures"], alignn_runs["test_ids"][:1], tmp_path)
    unseen = next(el for el in ("Pu", "Xe", "Tc", "Pm") if el not in domain["elements"])
    swapped = read_structure(tmp_path / next(iter(names)), "auto")
    swapped.replace(0, unseen)
    swapped.to(filename=str(tmp_path / "swapped.vasp"), fmt="poscar")
    assert main(["predict", "--model", *map(str, alignn_runs["runs"]), str(tmp_path)]) == 0
    _, lines = _table_lines(capsys.readouterr().out)
    low, high = domain["volume_per_atom_range"]
    assert lines["POSCAR-isolated"].endswith(f"far from the training data: volume per atom 2.7e+04 A^3 outside the "
                                             f"training range {low:.4g}-{high:.4g} A^3")
    assert f"far from the training data: element {unseen} in no training material" in lines["swapped.vasp"]
    assert "far from" not in lines[next(iter(names))]


def test_a_negative_value_of_a_never_negative_target_is_flagged(alignn_runs: dict, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    """A band-gap run whose output bias is shifted down (and re-signed): every prediction becomes negative."""
    import torch

    split = _official_split(alignn_runs["structures"], "optb88vdw_bandgap", tmp_path)
    run = tmp_path / "gap"
    train.train(alignn_runs["structures"], split=split, graphs=alignn_runs["graphs"], embeddings=None, out_dir=run,
                cfg=train.TrainConfig(target="optb88vdw_bandgap", variant="alignn", seed=0, **{**SMALL, "epochs": 1}))
    state = io.read_torch(run / "model.pt")
    state["head.bias"] -= 100.0
    torch.save(state, run / "model.pt")
    io.write_json({**io.read_json(run / "model.json"), "model_sha256": io.sha256_file(run / "model.pt")},
                  run / "model.json")
    names = _write_inputs(alignn_runs["structures"], alignn_runs["test_ids"][:1], tmp_path / "in")
    assert main(["predict", "--model", str(run), str(tmp_path / "in")]) == 0
    header, lines = _table_lines(capsys.readouterr().out)
    assert "mean [eV]" in header
    low = io.read_json(split)["train_domain"]["target_range"][0]
    assert lines[next(iter(names))].endswith(f"negative prediction of optb88vdw_bandgap, whose training values are "
                                             f"all >= 0 (min {low:.4g}): not physical, treat as unreliable")
