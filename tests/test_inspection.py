"""`crys-pipeline inspect` verifies before it prints, for every artifact kind of the README's table (issue 23 case 16).

Real artifacts: the tiny JARVIS structures, their split, graph folder and a 1-epoch ALIGNN run laid out as the
workflow lays it out (`results/train/{source}/{target}/{variant}/{regime}/seed0`), the table built from it,
and embeddings of published robocrys texts. Each is inspected intact (exit 0, "integrity: verified"), then
with 16 bytes flipped inside (exit 1, one error naming the file).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pytest
from test_io_integrity import embeddings  # noqa: F401  (the module fixture: embeddings of real robocrys texts)
from train_helpers import build_graph_dir, structure_ids, write_split

from crys_pipeline import io, splits, tables, train
from crys_pipeline.cli import main
from crys_pipeline.run_id import RunId
from crys_pipeline.settings import ModelSettings, SplitSettings

SOURCE, TARGET = "jarvis_dft_3d_2021", "formation_energy_peratom"


@pytest.fixture(scope="module")
def results(jarvis_structures: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results/ folder: structures, rejected, splits, graphs, one run and table1 built from it."""
    res = tmp_path_factory.mktemp("inspect") / "results"
    (res / "structures").mkdir(parents=True)
    for name in (f"{SOURCE}.parquet", f"{SOURCE}.json"):
        shutil.copy(jarvis_structures.with_name(name), res / "structures" / name)
    structures = res / "structures" / f"{SOURCE}.parquet"
    rejected = [{"material_id": f"JVASP-X{i}", "reason": f"atoms closer than 0.5 A (min distance 0.0{i}0 A)"}
                for i in range(40)]  # the tiny set has no rejection: a rejected table with rows to damage
    io.write_parquet(pa.Table.from_pylist(rejected), res / "structures" / f"{SOURCE}.rejected.parquet",
                     kind="rejected", params={}, extra={"source": SOURCE})
    splits.make_splits(structures, target=TARGET, method="official", settings=SplitSettings(),
                       out_full=res / "splits" / "full.json", out_low20=res / "splits" / "low20.json")
    graphs = build_graph_dir(structures, res / "graphs" / SOURCE, shard_size=40)
    ids = structure_ids(structures, TARGET)
    split = write_split(res / "splits" / "small.json", TARGET, ids[:20], ids[20:25], ids[25:30])
    run = RunId(SOURCE, TARGET, "alignn", "full", 0).folder(res)
    train.train(structures, split=split, graphs=graphs, embeddings=None, out_dir=run,
                cfg=train.TrainConfig(target=TARGET, variant="alignn", seed=0, epochs=1, batch_size=8, device="cpu",
                                      threads=1, model=ModelSettings(hidden_features=16, alignn_layers=1,
                                                                     gcn_layers=1)))
    tables.build_table("table1", spec={"source": SOURCE, "targets": [TARGET], "variants": ["alignn"],
                                       "regime": "full"},
                       units={TARGET: "eV/atom"}, runs=[run / "summary.json"], out_csv=res / "table1.csv",
                       out_md=res / "table1.md")
    return res


RUN = f"train/{SOURCE}/{TARGET}/alignn/full/seed0"
ARTIFACTS = [
    "structures/jarvis_dft_3d_2021.json", "structures/jarvis_dft_3d_2021.parquet",
    "structures/jarvis_dft_3d_2021.rejected.parquet", "splits/full.json", f"graphs/{SOURCE}",
    f"graphs/{SOURCE}/shard-00001.parquet", f"graphs/{SOURCE}/manifest.json", RUN, f"{RUN}/model.pt",
    f"{RUN}/model.json", f"{RUN}/metrics.jsonl", f"{RUN}/predictions.parquet", f"{RUN}/summary.json",
    "table1.csv", "table1.md", "embeddings.h5",
]


def flip_inside(path: Path) -> Path:
    """Invert 16 bytes inside the data (a Parquet column chunk, the HDF5 `full` matrix, else mid-file)."""
    offset = path.stat().st_size // 2
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        group = pq.ParquetFile(path).metadata.row_group(0)
        chunk = max((group.column(i) for i in range(group.num_columns)), key=lambda c: c.total_compressed_size)
        offset = chunk.data_page_offset + chunk.total_compressed_size // 2
    elif path.suffix == ".h5":
        import h5py

        with h5py.File(path, "r") as handle:
            offset = handle["full"].id.get_offset() + 64
    data = bytearray(path.read_bytes())
    data[offset : offset + 16] = bytes(b ^ 0xFF for b in data[offset : offset + 16])
    path.write_bytes(bytes(data))
    return path


def _copy(results: Path, embeddings: Path, dest: Path) -> Path:  # noqa: F811
    shutil.copytree(results, dest)
    shutil.copy(embeddings, dest / "embeddings.h5")
    return dest


@pytest.mark.parametrize("artifact", ARTIFACTS)
def test_inspect_verifies_every_artifact_kind(results: Path, embeddings: Path, artifact: str,  # noqa: F811
                                              tmp_path: Path, capsys: pytest.CaptureFixture, caplog) -> None:
    res = _copy(results, embeddings, tmp_path / "results")
    path = res / artifact
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(str(path)) and out[1].startswith("integrity: verified ("), out[:2]
    damaged = flip_inside(path / "shard-00000.parquet" if path.is_dir() and "graphs" in artifact else
                          path / "model.pt" if path.is_dir() else path)
    caplog.clear()
    assert main(["inspect", str(path)]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and str(damaged) in errors[0], errors
    assert capsys.readouterr().out == ""


def test_an_edited_table_number_is_caught_by_rebuilding_it_from_its_runs(results: Path, tmp_path: Path,
                                                                        caplog) -> None:
    res = shutil.copytree(results, tmp_path / "results")
    csv = res / "table1.csv"
    row = tables.read_table_csv(csv)[0]
    csv.write_text(csv.read_text().replace(f",{row['mae_mean']!r},", f",{row['mae_mean'] / 2!r},"))
    assert main(["inspect", str(csv)]) == 1
    assert f"{csv}: corrupt or unreadable artifact (differs from the table rebuilt from the summaries of its runs" \
        in caplog.text


def test_no_verify_prints_an_edited_json_that_verification_refuses(results: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture, caplog) -> None:
    path = Path(shutil.copy(results / "splits" / "full.json", tmp_path / "full.json"))
    path.write_text(path.read_text().replace('"seed": 123', '"seed": 124'))
    assert main(["inspect", str(path)]) == 1
    assert f"{path}: corrupt or unreadable artifact (_sha256 checksum mismatch" in caplog.text
    assert main(["inspect", "--no-verify", str(path)]) == 0
    assert "integrity: not verified (--no-verify)" in capsys.readouterr().out
