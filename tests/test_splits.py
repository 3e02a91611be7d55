"""Tests for the official and ALIGNN seed-123 splits and the low-data regime."""

from __future__ import annotations

from pathlib import Path

import pytest

from crys_pipeline import splits
from crys_pipeline.io import read_json, read_parquet
from crys_pipeline.settings import SplitSettings


@pytest.mark.parametrize(("total", "ratios"), [(1000, (0.8, 0.1, 0.1)), (55713, (0.8, 0.1, 0.1)),
                                              (999, (0.2, 0.1, 0.1)), (37, (None, 0.1, 0.1))])
def test_seed123_split_is_alignns_bit_for_bit(total: int, ratios: tuple) -> None:
    from alignn.data import get_id_train_val_test

    ref = get_id_train_val_test(total_size=total, split_seed=123, train_ratio=ratios[0], val_ratio=ratios[1],
                                test_ratio=ratios[2])
    ours = splits.alignn_split_indices(total, seed=123, train_ratio=ratios[0], val_ratio=ratios[1],
                                       test_ratio=ratios[2])
    assert [list(map(int, r)) for r in ref] == [list(x) for x in ours]


def test_seed123_split_known_values() -> None:
    # stdlib Mersenne Twister shuffle after random.seed(123): pinned so a change of algorithm is caught
    train, val, test = splits.alignn_split_indices(10, seed=123, train_ratio=0.8, val_ratio=0.1,
                                                   test_ratio=0.1)
    assert (len(train), len(val), len(test)) == (8, 1, 1)
    assert sorted(train + val + test) == list(range(10))
    assert splits.alignn_split_indices(10, seed=123, train_ratio=0.8, val_ratio=0.1,
                                       test_ratio=0.1) == (train, val, test)
    with pytest.raises(ValueError, match="exceed"):
        splits.alignn_split_indices(10, seed=123, counts=(8, 2, 1))


def test_mp_paper_counts() -> None:
    train, val, test = splits.alignn_split_indices(69239, seed=123, counts=(60000, 5000, 4239))
    assert (len(train), len(val), len(test)) == (60000, 5000, 4239)
    assert not set(train) & set(test) and not set(val) & set(test)


def test_official_split_files(jarvis_structures: Path, tmp_path: Path) -> None:
    full, _low = splits.make_splits(jarvis_structures, target="mbj_bandgap", method="official",
                                    settings=SplitSettings(), out_full=tmp_path / "full.json",
                                    out_low20=tmp_path / "low20.json")
    rows = read_parquet(jarvis_structures, "structures").to_pylist()
    for label in ("train", "val", "test"):
        expected = [r["material_id"] for r in rows if r["split_mbj_bandgap"] == label]
        assert full[f"id_{label}"] == expected
    saved_full, saved_low = read_json(tmp_path / "full.json"), read_json(tmp_path / "low20.json")
    assert saved_full["hash"] == splits.split_hash(full) != saved_low["hash"]
    assert saved_low["id_val"] == saved_full["id_val"] and saved_low["id_test"] == saved_full["id_test"]
    assert set(saved_low["id_train"]) <= set(saved_full["id_train"])
    assert len(saved_low["id_train"]) == int(0.2 * saved_full["n_total"])


def test_random123_low20_is_head_of_same_permutation(mp_structures: Path, tmp_path: Path) -> None:
    full, low = splits.make_splits(mp_structures, target="log10_k_vrh", method="random123", settings=SplitSettings(),
                                   out_full=tmp_path / "f.json", out_low20=tmp_path / "l.json")
    n = read_json(tmp_path / "f.json")["n_total"]
    assert n == 37
    assert (len(full["id_train"]), len(full["id_val"]), len(full["id_test"])) == (29, 3, 3)
    assert low["id_val"] == full["id_val"] and low["id_test"] == full["id_test"]
    assert full["id_train"][: len(low["id_train"])] == low["id_train"] and len(low["id_train"]) == 7


def test_duplicate_official_label_keeps_first() -> None:
    out = splits.official_split(["a", "b", "c"], ["train|test", "val", None])
    assert out == {"id_train": ["a"], "id_val": ["b"], "id_test": []}


def test_target_without_training_values_stops_the_splits_stage(jarvis_structures: Path, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """Issue 23 case 6: no train value for a target is an error here, naming the target and the counts."""
    import pyarrow as pa

    from crys_pipeline import io
    from crys_pipeline.cli import main

    table = read_parquet(jarvis_structures, "structures")
    labels = table.column("split_mbj_bandgap").to_pylist()
    values = [None if label == "train" else v for v, label in zip(table.column("mbj_bandgap").to_pylist(), labels,
                                                                     strict=True)]
    table = table.set_column(table.column_names.index("mbj_bandgap"), "mbj_bandgap", pa.array(values, pa.float64()))
    meta = io.read_meta(jarvis_structures)
    structures = tmp_path / "s.parquet"
    io.write_parquet(table, structures, kind="structures", params=meta["params"],
                     extra={k: v for k, v in meta.items() if k not in ("kind", "schema_version", "package_version",
                                                                       "params")})
    n_val, n_test = labels.count("val"), labels.count("test")
    code = main(["splits", "--structures", str(structures), "--target", "mbj_bandgap", "--method", "official",
                 "--out-full", str(tmp_path / "full.json"), "--out-low20", str(tmp_path / "low20.json")])
    assert code == 1 and not (tmp_path / "full.json").exists()
    assert (f"{structures}: target 'mbj_bandgap' has no training values: official split 0 train, {n_val} val, "
            f"{n_test} test of the {n_val + n_test} materials with a value") in caplog.text
