"""Damaged artifacts are refused with one line naming the file and the fix (issue 17, cases 2, 3 and 12).

Real files, real damage: bytes flipped inside a graph shard's edge_vec page and inside the embeddings
matrix, truncated and random-byte files, an edited JSON value, and a model file whose unpickling
would run code.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SHARED_DATA
from train_helpers import build_graph_dir

from crys_pipeline import cli, embed, io
from crys_pipeline.settings import EmbedSettings

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
