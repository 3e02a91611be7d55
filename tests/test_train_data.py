"""Data tests on real JARVIS structures: the join over a split, recorded drops, items and batches."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from train_helpers import build_graph_dir, ingest_first, structure_ids, write_split

from crys_pipeline import io
from crys_pipeline.train.data import CrystalDataset, SplitData, load_training_data, make_loader

TARGET = "formation_energy_peratom"


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The first 24 real JARVIS structures, one (with an MBJ gap) emptied of its atoms, and their graphs."""
    work = tmp_path_factory.mktemp("data")
    structures = ingest_first(24, work)
    table = io.read_parquet(structures, "structures")
    row = next(i for i, v in enumerate(table.column("mbj_bandgap").to_pylist()) if v is not None and i >= 3)
    victim = table.column("material_id")[row].as_py()
    for name in ("species", "frac_coords"):  # an emptied structure: the graph stage records a failure
        values = table.column(name).to_pylist()
        values[row] = []
        table = table.set_column(table.column_names.index(name), name,
                                 pa.array(values, type=table.schema.field(name).type))
    meta = io.read_meta(structures)
    io.write_parquet(table, structures, kind="structures", params=meta["params"],
                     extra={k: v for k, v in meta.items()
                            if k not in ("kind", "schema_version", "package_version", "created", "params")})
    return {"work": work, "structures": structures, "graphs": build_graph_dir(structures, work / "graphs", 10),
            "victim": victim}


def test_join_drops_after_the_split_with_reasons(broken: dict) -> None:
    ids = structure_ids(broken["structures"], "mbj_bandgap")
    table = io.read_parquet(broken["structures"], "structures", columns=["material_id", "mbj_bandgap"])
    null = [m for m, v in zip(table.column("material_id").to_pylist(), table.column("mbj_bandgap").to_pylist(),
                              strict=True) if v is None]
    victim = broken["victim"]
    assert null and victim in table.column("material_id").to_pylist()
    good = [m for m in ids if m != victim]
    train_ids = [*good[:6], victim, *good[6:8]]
    split = write_split(broken["work"] / "split.json", "mbj_bandgap", train_ids, [null[0], *good[8:10]],
                        ["JVASP-0", *good[10:12]])
    data = load_training_data(broken["structures"], split=split, target="mbj_bandgap",
                              graphs=broken["graphs"])
    reasons = {d["material_id"]: (d["split"], d["reason"]) for d in data.dropped}
    assert set(reasons) == {victim, null[0], "JVASP-0"}
    assert reasons[null[0]] == ("val", "target missing")
    assert reasons["JVASP-0"] == ("test", "not in structures table")
    assert reasons[victim][0] == "train" and reasons[victim][1].startswith("graph failed:")
    # Survivors keep split-file order; every split member is kept or listed as dropped.
    assert data.splits["train"].ids == [m for m in train_ids if m not in reasons]
    for name, members in (("train", train_ids), ("val", [null[0], *good[8:10]]), ("test", ["JVASP-0", *good[10:12]])):
        kept = data.splits[name].ids
        assert len(kept) + sum(1 for d in data.dropped if d["split"] == name) == len(members)
    assert data.splits["val"].y.tolist() == pytest.approx(
        [dict(zip(table.column("material_id").to_pylist(), table.column("mbj_bandgap").to_pylist(), strict=True))[m]
         for m in good[8:10]])
    assert data.source == "jarvis_dft_3d_2021" and data.split_meta["hash"] == io.read_json(split)["hash"]
    assert data.graph_meta["params"]["max_neighbors"] == 12 and set(data.hashes) == {"structures", "split", "graphs"}


def test_split_of_another_target_is_refused(broken: dict) -> None:
    ids = structure_ids(broken["structures"], TARGET)
    split = write_split(broken["work"] / "fe.json", TARGET, ids[:4], ids[4:6], ids[6:8])
    with pytest.raises(ValueError, match="split of target"):
        load_training_data(broken["structures"], split=split, target="mbj_bandgap", graphs=broken["graphs"])


def test_items_and_batches_carry_graphs_targets_and_ids(broken: dict) -> None:
    ids = [m for m in structure_ids(broken["structures"], TARGET) if m != broken["victim"]]
    split = write_split(broken["work"] / "fe2.json", TARGET, ids[:10], ids[10:12], ids[12:14])
    data = load_training_data(broken["structures"], split=split, target=TARGET, graphs=broken["graphs"])
    train = data.splits["train"]
    item = CrystalDataset(train)[2]
    z, _, edge_vec = train.graphs[2]
    assert item.material_id == train.ids[2] and item.num_nodes == len(z) and item.z.dtype == torch.int64
    assert item.edge_index.shape == (2, edge_vec.shape[0]) and item.edge_vec.dtype == torch.float32
    assert int(item.edge_index.max()) < len(z) and item.y.item() == pytest.approx(train.y[2], rel=1e-6)
    batches = list(make_loader(train, 4))
    assert [len(b.material_id) for b in batches] == [4, 4, 2]
    assert [m for b in batches for m in b.material_id] == train.ids
    first = batches[0]
    sizes = [len(train.graphs[i][0]) for i in range(4)]
    assert first.z.shape[0] == sum(sizes) and first.num_graphs == 4
    assert torch.equal(torch.bincount(first.batch), torch.tensor(sizes))
    # edges of crystal 1 point at its own (offset) nodes
    e0 = train.graphs[0][1].shape[1]
    assert int(first.edge_index[:, e0:].min()) >= sizes[0]
    np.testing.assert_allclose(first.y.numpy(), train.y[:4], rtol=1e-6)


def test_shuffled_loader_is_reproducible_and_workers_change_nothing(broken: dict) -> None:
    ids = [m for m in structure_ids(broken["structures"], TARGET) if m != broken["victim"]]
    split = write_split(broken["work"] / "fe3.json", TARGET, ids[:12], ids[12:14], ids[14:16])
    train = load_training_data(broken["structures"], split=split, target=TARGET,
                               graphs=broken["graphs"]).splits["train"]

    def order(workers: int) -> list[list[str]]:
        loader = make_loader(train, 5, shuffle=True, drop_last=True, num_workers=workers,
                             generator=torch.Generator().manual_seed(7))
        return [b.material_id for _ in range(2) for b in loader]

    once = order(0)
    assert [len(b) for b in once] == [5, 5, 5, 5] and once[:2] != once[2:]  # drop_last, reshuffled per epoch
    assert order(0) == once and order(2) == once


def test_text_only_items_have_no_nodes() -> None:
    text = np.arange(12, dtype=np.float32).reshape(3, 4)
    data = SplitData(ids=["a", "b", "c"], y=np.array([1.0, 2.0, 3.0]), graphs=None, text=text)
    batch = next(iter(make_loader(data, 2)))
    assert batch.num_graphs == 2 and batch.num_nodes == 0 and batch.material_id == ["a", "b"]
    assert torch.equal(batch.text_emb, torch.from_numpy(text[:2]))
