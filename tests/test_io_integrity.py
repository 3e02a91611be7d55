"""Damaged artifacts are refused with one line naming the file and the fix (issue 17, cases 2, 3 and 12).

Real files, real damage: bytes flipped inside a graph shard's edge_vec page and inside the embeddings
matrix, truncated and random-byte files, an edited JSON value, and a model file whose unpickling
would run code.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, SHARED_DATA, default_config
from train_helpers import build_graph_dir

from crys_pipeline import cli, embed, io
from crys_pipeline.settings import EmbedSettings, ModelSettings

FIX = "delete it and rerun"


def flip(path: Path, offset: int, n: int) -> None:
    """Invert `n` bytes of `path` starting at `offset`."""
    data = bytearray(path.read_bytes())
    data[offset : offset + n] = bytes(b ^ 0xFF for b in data[offset : offset + n])
    path.write_bytes(bytes(data))


def column_chunk(path: Path, column: str) -> tuple[int, int]:
    """(file offset, compressed size) of the first column chunk of `column`."""
    meta = pq.ParquetFile(path).metadata
    idx = meta.schema.to_arrow_schema().get_field_index(column)
    names = [meta.row_group(0).column(i).path_in_schema for i in range(meta.num_columns)]
    chunk = meta.row_group(0).column(next(i for i, n in enumerate(names) if n.split(".")[0] == column))
    assert idx >= 0
    return chunk.data_page_offset, chunk.total_compressed_size


@pytest.fixture(scope="module")
def graphs(jarvis_structures: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_graph_dir(jarvis_structures, tmp_path_factory.mktemp("g") / "graphs", shard_size=40)


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    recs = [json.loads(line) for line in (SHARED_DATA / "robocrys_text_reference_mp.jsonl").read_text().splitlines()]
    rows = [{"material_id": r["material_id"], "status": "ok", "error": "", "full": r["description"],
             "global": r["description"][:80], "local": r["description"][80:300]} for r in recs[:4]]
    work = tmp_path_factory.mktemp("e")
    io.write_parquet(pa.Table.from_pylist(rows), work / "sections.parquet", kind="sections", params={},
                     extra={"source": "mp_ref", "versions": {}, "counts": {}})
    embed.embed_sections(work / "sections.parquet", out=work / "e.h5",
                         settings=EmbedSettings(max_length=64, token_budget=1024, device="cpu"))
    return work / "e.h5"


def test_flipped_bytes_in_a_graph_shard_edge_vec_page_are_refused(graphs: Path, tmp_path: Path) -> None:
    work = shutil.copytree(graphs, tmp_path / "graphs")
    shard = work / "shard-00001.parquet"
    offset, size = column_chunk(shard, "edge_vec")
    flip(shard, offset + size // 2, 16)
    with pytest.raises(io.ArtifactError, match=f"shard-00001.parquet: .*sha256 differs.*delete the folder {work} "):
        io.read_graph_dir(work)
    with pytest.raises(io.ArtifactError, match=f"shard-00001.parquet: .*CRC checksum verification failed.*{FIX}"):
        io.read_parquet(shard, "graphs")  # the page checksum, without the manifest


def test_flipped_bytes_in_the_embeddings_matrix_are_refused(embeddings: Path, tmp_path: Path) -> None:
    import h5py

    path = Path(shutil.copy(embeddings, tmp_path / "e.h5"))
    with h5py.File(path, "r") as handle:
        offset = handle["full"].id.get_offset()
    flip(path, offset + 100, 8)
    with pytest.raises(io.ArtifactError, match=f"e.h5: .*dataset 'full' differs from its recorded sha256.*{FIX}"):
        io.read_embeddings(path, "full")
    io.read_embeddings(path, "local")  # the other variants are intact and still readable


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_truncated_or_garbage_files_give_one_line_naming_the_path(
    damage: str, jarvis_structures: Path, graphs: Path, embeddings: Path, tmp_path: Path, caplog
) -> None:
    parquet = Path(shutil.copy(jarvis_structures, tmp_path / "s.parquet"))
    h5 = Path(shutil.copy(embeddings, tmp_path / "e.h5"))
    for path in (parquet, h5):
        size = path.stat().st_size
        path.write_bytes(path.read_bytes()[: size // 2] if damage == "truncate" else os.urandom(size))
    with pytest.raises(io.ArtifactError, match=f"^{parquet}: corrupt or unreadable artifact .*{FIX}"):
        io.read_parquet(parquet, "structures")
    with pytest.raises(io.ArtifactError, match=f"^{h5}: corrupt or unreadable artifact .*{FIX}"):
        io.read_embeddings(h5, "full")
    code = cli.main(["splits", "--structures", str(parquet), "--target", "formation_energy_peratom",
                     "--method", "official", "--out-full", str(tmp_path / "f.json"),
                     "--out-low20", str(tmp_path / "l.json")])
    assert code == 1
    assert any(str(parquet) in r.getMessage() and FIX in r.getMessage() for r in caplog.records)


def test_edited_json_artifact_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    io.write_json({"test_mae": 0.48, "variant": "crysmmnet"}, path)
    assert io.read_json(path) == {"test_mae": 0.48, "variant": "crysmmnet"}
    path.write_text(path.read_text().replace("0.48", "0.28"))
    with pytest.raises(io.ArtifactError, match=f"summary.json: .*checksum mismatch.*{FIX}"):
        io.read_json(path)
    path.write_text(path.read_text()[:-10])
    with pytest.raises(io.ArtifactError, match=f"summary.json: .*JSONDecodeError.*{FIX}"):
        io.read_json(path)


class _Marker:
    """Unpickling this writes a marker file: what a crafted model.pt would do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "code ran"))


def test_read_torch_refuses_a_pickle_that_would_run_code(tmp_path: Path) -> None:
    import torch

    marker = tmp_path / "marker"
    evil = tmp_path / "model.pt"
    torch.save({"weight": torch.zeros(2), "payload": _Marker(str(marker))}, evil, pickle_protocol=2)
    with pytest.raises(io.ArtifactError, match=r"model.pt: refused, it holds objects other than tensors"):
        io.read_torch(evil)
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the positive control: an unpickling load runs the payload
    assert marker.read_text() == "code ran"
    plain = tmp_path / "plain.pt"
    io.write_torch({"weight": torch.ones(2), "epoch": 3, "rng": (3, (1, 2), None)}, plain)
    assert io.read_torch(plain)["epoch"] == 3


def test_a_write_that_fails_leaves_the_old_artifact_and_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "summary.json"
    io.write_json({"test_mae": 0.48}, path)

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text('{"test_mae": 0.2')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        io.write_atomic(path, half_then_fail)
    assert io.read_json(path) == {"test_mae": 0.48}
    assert sorted(p.name for p in path.parent.iterdir()) == ["summary.json"]
    staging = path.with_name("summary.json.partial")
    staging.write_text("resumable")
    with pytest.raises(OSError, match="disk full"):
        io.write_atomic(path, half_then_fail, staging=staging)
    assert staging.is_file() and io.read_json(path) == {"test_mae": 0.48}
    io.write_atomic(path, lambda tmp: tmp.write_text("done\n"), staging=staging)
    assert path.read_text() == "done\n" and not staging.exists()


# --- a full disk (issue 23 case 8) ------------------------------------------------------------------
# Each stage runs as `python -m crys_pipeline` with its output folder on a real 256 KiB tmpfs that is already
# full, mounted in a private mount namespace (`unshare --mount --map-root-user`, so no root is needed and the
# mount goes away with the process): the kernel's own ENOSPC, through pyarrow, json, torch, h5py and csv.

FULL_DISK = ('dir=$1; shift; mount -t tmpfs -o size=256k tmpfs "$dir" || exit 99; '
             'cat /dev/zero > "$dir/.filler" 2>/dev/null; "$@"; rc=$?; '
             'echo "LEFT:$(cd "$dir" && find . -type f ! -name .filler | sort | tr "\\n" " ")"; exit $rc')


def on_full_disk(folder: Path, *argv: str) -> subprocess.CompletedProcess:
    """`crys-pipeline ARGV` with `folder` a full file system; stdout's last line lists the files left in it."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "--mount", "--map-root-user", "true"],
                                                         check=False).returncode:
        pytest.skip("needs `unshare --mount --map-root-user` (user namespaces) to mount a small tmpfs")
    folder.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", FULL_DISK, "sh", str(folder),
                           sys.executable, "-m", "crys_pipeline", *argv], capture_output=True, text=True,
                          env=env, check=False, timeout=300)


@pytest.fixture(scope="module")
def small_run(jarvis_structures: Path, graphs: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 20 / 5 / 5 split of the tiny JARVIS set and a 1-epoch ALIGNN run on it, with one input POSCAR."""
    from train_helpers import structure_ids, write_split

    from crys_pipeline import train
    from crys_pipeline.ingest import row_to_structure

    work = tmp_path_factory.mktemp("small_run")
    ids = structure_ids(jarvis_structures, "formation_energy_peratom")
    split = write_split(work / "split.json", "formation_energy_peratom", ids[:20], ids[20:25], ids[25:30])
    train.train(jarvis_structures, split=split, graphs=graphs, embeddings=None, out_dir=work / "run",
                cfg=train.TrainConfig(target="formation_energy_peratom", variant="alignn", seed=0, epochs=1,
                                      batch_size=8, device="cpu", threads=1,
                                      model=ModelSettings(hidden_features=16, alignn_layers=1, gcn_layers=1)))
    row = io.read_parquet(jarvis_structures, "structures").to_pylist()[0]
    row_to_structure(row).to(filename=str(work / f"{row['material_id']}.vasp"), fmt="poscar")
    return {"split": split, "run": work / "run", "poscar": work / f"{row['material_id']}.vasp"}


def _stage_argv(stage: str, full: Path, jarvis: Path, graphs: Path, embeddings: Path, run: dict[str, Path]):
    """(argv, the file the stage writes first) of `stage` with its outputs in `full`."""
    manifest = jarvis.with_name("jarvis_dft_3d_2021.json")
    targets = json.dumps(default_config()["sources"]["jarvis_dft_3d_2021"]["targets"])
    small = ["--hidden-features", "16", "--alignn-layers", "1", "--gcn-layers", "1", "--batch-size", "8"]
    return {
        "ingest": (["ingest", "--manifest", str(manifest), "--targets", targets, "--stratify-target",
                    "formation_energy_peratom", "--out", f"{full}/s.parquet", "--rejected", f"{full}/r.parquet"],
                   full / "s.parquet"),
        "splits": (["splits", "--structures", str(jarvis), "--target", "formation_energy_peratom", "--out-full",
                    f"{full}/full.json", "--out-low20", f"{full}/low20.json"], full / "full.json"),
        "graphs": (["graphs", "--structures", str(jarvis), "--out-dir", f"{full}/graphs"],
                   full / "graphs" / "shard-00000.parquet"),
        "train": (["train", "--structures", str(jarvis), "--split", str(run["split"]), "--graphs", str(graphs),
                   "--embeddings", "", "--target", "formation_energy_peratom", "--variant", "alignn", "--seed", "0",
                   "--epochs", "1", *small, "--device", "cpu", "--threads", "1", "--out-dir", f"{full}/run"],
                  full / "run" / "checkpoint.pt"),
        "embed": (["embed", "--sections", str(embeddings.with_name("sections.parquet")), "--max-length", "64",
                   "--token-budget", "1024", "--device", "cpu", "--out", f"{full}/e.h5"], full / "e.h5.partial"),
        "predict": (["predict", "--model", str(run["run"]), str(run["poscar"]), "--out", f"{full}/pred.csv"],
                    full / "pred.csv"),
    }[stage]


@pytest.mark.parametrize("stage", ["ingest", "splits", "graphs", "train", "embed", "predict"])
def test_a_full_disk_is_named_with_the_file_being_written(stage: str, jarvis_structures: Path, graphs: Path,
                                                           embeddings: Path, small_run: dict, tmp_path: Path) -> None:
    argv, written = _stage_argv(stage, tmp_path / "full", jarvis_structures, graphs, embeddings, small_run)
    result = on_full_disk(tmp_path / "full", *argv)
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(errors) == 1 and errors[0].endswith(
        f"{written}: could not be written, the disk is full (no space left in {written.parent}); free some space, "
        "then rerun the same command"), result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == "LEFT:", result.stdout  # no partial file: the rerun starts clean
