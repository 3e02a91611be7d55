"""Tests for download + ingest on the real offline snapshots."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import SOURCES, default_config, tiny_records, tiny_snapshot_dir

from crys_pipeline import download, ingest
from crys_pipeline.io import ArtifactError, read_meta, read_parquet, sha256_file, write_json
from crys_pipeline.sources.records import RawRecord


def test_every_tiny_id_is_kept_with_structure_and_targets(jarvis_structures: Path) -> None:
    raw = tiny_records("jarvis")
    table = read_parquet(jarvis_structures, "structures").to_pylist()
    assert [r["material_id"] for r in table] == [r["jid"] for r in raw]  # snapshot order kept
    first = table[0]
    assert first["natoms"] == raw[0]["natoms"] == len(first["species"]) == len(first["frac_coords"])
    assert first["formation_energy_peratom"] == pytest.approx(raw[0]["formation_energy_peratom"])
    assert first["split_formation_energy_peratom"] == raw[0]["split"]["formation_energy_peratom"]
    structure = ingest.row_to_structure(first)
    assert structure.composition.reduced_formula == first["formula"]
    assert structure.volume == pytest.approx(abs(__import__("numpy").linalg.det(raw[0]["lattice_mat"])))


def test_mp_moduli_are_log10_and_random_split_targets_have_no_label(mp_structures: Path) -> None:
    raw = {r["material_id"]: r for r in tiny_records("mp")}
    rows = read_parquet(mp_structures, "structures").to_pylist()
    with_k = [r for r in rows if raw[r["material_id"]]["K_VRH"] is not None]
    assert len(with_k) == 37  # PROVENANCE: 37 tiny MP records carry moduli
    for row in with_k:
        assert row["log10_k_vrh"] == pytest.approx(math.log10(raw[row["material_id"]]["K_VRH"]))
        assert row["split_log10_k_vrh"] is None
    assert all(r["split_e_form"] == raw[r["material_id"]]["split_megnet_2018"] for r in rows)
    missing = [r for r in rows if raw[r["material_id"]]["K_VRH"] is None]
    assert all(r["log10_k_vrh"] is None for r in missing)


def _write_snapshot(tmp_path: Path, records: list[dict]) -> Path:
    snap = tmp_path / "snap"
    snap.mkdir()
    with gzip.open(snap / download.OFFLINE_FILES["jarvis"], "wt") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    return snap


def test_bad_records_are_rejected_with_reason_and_none_lost(tmp_path: Path) -> None:
    good = tiny_records("jarvis")[:5]
    bad = [dict(good[0]) for _ in range(5)]
    reasons = {}
    bad[0].update(jid="BAD-nan", frac_coords=[[float("nan"), 0, 0], *good[0]["frac_coords"][1:]])
    reasons["BAD-nan"] = "NaN"
    bad[1].update(jid="BAD-vol", lattice_mat=[[1, 0, 0], [0, 1, 0], [0, 0, 0]])
    reasons["BAD-vol"] = "degenerate cell: volume 0 A^3"
    bad[2].update(jid="BAD-close", frac_coords=[[0, 0, 0]] * len(good[0]["frac_coords"]))
    reasons["BAD-close"] = "atoms closer than"
    bad[3].update(jid="BAD-el", species=["Xx", *good[0]["species"][1:]])
    reasons["BAD-el"] = "unknown element(s) Xx"
    bad[4].update(jid="BAD-shape", frac_coords=[[0, 0]])
    reasons["BAD-shape"] = "unparseable"
    bad[0]["formation_energy_peratom"] = "na"
    snap = _write_snapshot(tmp_path, good + bad)
    cfg = default_config()["sources"][SOURCES["jarvis"]]
    download.fetch("j", provider="jarvis", jarvis_key="dft_3d_2021", snapshot_dir=snap,
                   download_dir=tmp_path / "dl", out=tmp_path / "m.json")
    kept, rejected = ingest.ingest(tmp_path / "m.json", targets=cfg["targets"], subset=None,
                                   stratify_target=cfg["stratify_target"], out=tmp_path / "s.parquet",
                                   rejected_out=tmp_path / "r.parquet")
    assert (kept, rejected) == (5, 5)
    rows = read_parquet(tmp_path / "r.parquet", "rejected").to_pylist()
    assert {r["material_id"]: r["reason"] for r in rows}.keys() == reasons.keys()
    for row in rows:
        assert reasons[row["material_id"]] in row["reason"]
    ids = read_parquet(tmp_path / "s.parquet", "structures").column("material_id").to_pylist()
    assert sorted(ids + [r["material_id"] for r in rows]) == sorted(r["jid"] for r in good + bad)


def test_na_and_nan_targets_become_null() -> None:
    assert ingest.clean_value("na", "none") is None
    assert ingest.clean_value(float("nan"), "none") is None
    assert ingest.clean_value(None, "log10") is None
    assert ingest.clean_value(100.0, "log10") == pytest.approx(2.0)
    assert ingest.clean_value("1.5", "none") == 1.5


def test_subset_is_deterministic_within_official_splits(tmp_path: Path, shared_data: Path) -> None:
    cfg = default_config()["sources"][SOURCES["jarvis"]]
    download.fetch("j", provider="jarvis", jarvis_key="dft_3d_2021", snapshot_dir=shared_data,
                   download_dir=tmp_path / "dl", out=tmp_path / "m.json")
    subset = {"train": 30, "val": 5, "test": 4}
    out = []
    for i in range(2):
        ingest.ingest(tmp_path / "m.json", targets=cfg["targets"], subset=subset,
                      stratify_target="formation_energy_peratom", out=tmp_path / f"s{i}.parquet",
                      rejected_out=tmp_path / f"r{i}.parquet")
        out.append(read_parquet(tmp_path / f"s{i}.parquet", "structures").to_pylist())
    assert [r["material_id"] for r in out[0]] == [r["material_id"] for r in out[1]]
    labels = [r["split_formation_energy_peratom"] for r in out[0]]
    assert (labels.count("train"), labels.count("val"), labels.count("test")) == (30, 5, 4)
    meta = read_meta(tmp_path / "s0.parquet")
    assert meta["n_snapshot"] == 17314 and meta["n_selected"] == 39
    # materials carrying every target come first, so the sparse targets (MBJ, moduli) stay usable
    assert all(all(r[t] is not None for t in cfg["targets"]) for r in out[0])


def test_changed_snapshot_is_refused(tmp_path: Path) -> None:
    snap = _write_snapshot(tmp_path, tiny_records("jarvis")[:3])
    download.fetch("j", provider="jarvis", jarvis_key="dft_3d_2021", snapshot_dir=snap,
                   download_dir=tmp_path / "dl", out=tmp_path / "m.json")
    with gzip.open(snap / download.OFFLINE_FILES["jarvis"], "at") as fh:
        fh.write("\n")
    cfg = default_config()["sources"][SOURCES["jarvis"]]
    with pytest.raises(ValueError, match="sha256 mismatch"):
        ingest.ingest(tmp_path / "m.json", targets=cfg["targets"], subset=None,
                      stratify_target="formation_energy_peratom", out=tmp_path / "s.parquet",
                      rejected_out=tmp_path / "r.parquet")


def test_offline_without_snapshot_fails_with_both_ways_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from crys_pipeline.cli import main

    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # guarantee no route even where a network exists
    code = main(["download", "--source", "jarvis_dft_3d_2021", "--provider", "jarvis", "--jarvis-key",
                 "dft_3d_2021", "--snapshot-dir", str(tmp_path), "--download-dir", str(tmp_path / "dl"),
                 "--out", str(tmp_path / "m.json")])
    assert code == 1 and not (tmp_path / "m.json").exists()
    with pytest.raises(download.SnapshotUnavailable, match=r"snapshot_dir.*figshare"):
        download.fetch("jarvis_dft_3d_2021", provider="jarvis", jarvis_key="dft_3d_2021",
                       snapshot_dir=tmp_path, download_dir=tmp_path / "dl", out=tmp_path / "m.json")


def test_reader_refuses_wrong_kind_and_stale_params(jarvis_structures: Path) -> None:
    with pytest.raises(ArtifactError, match="expected a 'rejected'"):
        read_parquet(jarvis_structures, "rejected")
    with pytest.raises(ArtifactError, match="stale"):
        read_parquet(jarvis_structures, "structures", expect={"stratify_target": "mbj_bandgap"})
    assert pq.read_metadata(jarvis_structures).num_rows == 100


def test_figshare_zip_in_snapshot_dir_is_recognised(tmp_path: Path) -> None:
    import zipfile

    records = [{"jid": r["jid"], "atoms": {"lattice_mat": r["lattice_mat"], "coords": r["frac_coords"],
                "elements": r["species"], "cartesian": False},
                "formation_energy_peratom": r["formation_energy_peratom"], "optb88vdw_bandgap": "na"}
               for r in tiny_records("jarvis")[:4]]
    with zipfile.ZipFile(tmp_path / "jdft_3d-8-18-2021.json.zip", "w") as zf:
        zf.writestr("jdft_3d-8-18-2021.json", json.dumps(records))
    manifest = download.fetch("j", provider="jarvis", jarvis_key="dft_3d_2021", snapshot_dir=tmp_path,
                              download_dir=tmp_path / "dl", out=tmp_path / "m.json")
    assert manifest["files"]["structures"]["format"] == download.FORMAT_FIGSHARE
    cfg = default_config()["sources"][SOURCES["jarvis"]]
    ingest.ingest(tmp_path / "m.json", targets=cfg["targets"], subset=None,
                  stratify_target="formation_energy_peratom", out=tmp_path / "s.parquet",
                  rejected_out=tmp_path / "r.parquet")
    rows = read_parquet(tmp_path / "s.parquet", "structures").to_pylist()
    assert [r["material_id"] for r in rows] == [r["jid"] for r in records]
    assert all(r["optb88vdw_bandgap"] is None for r in rows)
    # the official label comes from the installed jarvis-leaderboard benchmark files
    assert rows[0]["split_formation_energy_peratom"] == tiny_records("jarvis")[0]["split"]["formation_energy_peratom"]


def _ingest_snapshot(tmp_path: Path, records: list[dict], lines: list[str] = (), targets: dict | None = None):
    snap = _write_snapshot(tmp_path, records)
    if lines:
        with gzip.open(snap / download.OFFLINE_FILES["jarvis"], "at") as fh:
            fh.writelines(lines)
    cfg = default_config()["sources"][SOURCES["jarvis"]]
    download.fetch("j", provider="jarvis", jarvis_key="dft_3d_2021", snapshot_dir=snap,
                   download_dir=tmp_path / "dl", out=tmp_path / "m.json")
    counts = ingest.ingest(tmp_path / "m.json", targets=targets or cfg["targets"], subset=None,
                           stratify_target=cfg["stratify_target"], out=tmp_path / "s.parquet",
                           rejected_out=tmp_path / "r.parquet")
    return counts, snap / download.OFFLINE_FILES["jarvis"]


def test_non_numeric_and_infinite_targets_become_null_and_are_named(tmp_path: Path, caplog) -> None:
    records = [dict(r) for r in tiny_records("jarvis")[:4]]
    records[1]["formation_energy_peratom"] = float("inf")  # json.dumps writes Infinity, as the file has
    records[2]["mbj_bandgap"] = "abc"
    (kept, rejected), _ = _ingest_snapshot(tmp_path, records)
    assert (kept, rejected) == (4, 0)
    rows = {r["material_id"]: r for r in read_parquet(tmp_path / "s.parquet", "structures").to_pylist()}
    assert rows[records[1]["jid"]]["formation_energy_peratom"] is None
    assert rows[records[2]["jid"]]["mbj_bandgap"] is None
    assert rows[records[3]["jid"]]["formation_energy_peratom"] == records[3]["formation_energy_peratom"]
    bad = read_meta(tmp_path / "s.parquet")["bad_values"]
    assert [(b["material_id"], b["field"], b["value"]) for b in bad] == [
        (records[1]["jid"], "formation_energy_peratom", "inf"), (records[2]["jid"], "mbj_bandgap", "'abc'")]
    assert f"{records[2]['jid']} field 'mbj_bandgap': non-numeric value 'abc' set to null" in caplog.text


def test_misspelled_target_field_stops_ingest_naming_the_closest(tmp_path: Path) -> None:
    targets = {"formation_energy_peratom": {"field": "formation_energy_per_atom", "unit": "eV/atom"}}
    with pytest.raises(ValueError, match=r"target 'formation_energy_peratom' reads field "
                       "'formation_energy_per_atom', which this snapshot does not have.*did you mean "
                       "'formation_energy_peratom'"):
        _ingest_snapshot(tmp_path, tiny_records("jarvis")[:3], targets=targets)


def test_record_without_id_and_truncated_line_are_rejected_with_file_and_line(tmp_path: Path) -> None:
    records = [dict(r) for r in tiny_records("jarvis")[:3]]
    del records[1]["jid"]
    truncated = json.dumps(tiny_records("jarvis")[3])[:200]
    (kept, rejected), path = _ingest_snapshot(tmp_path, records, [truncated])
    assert (kept, rejected) == (2, 2)
    rows = {r["material_id"]: r["reason"] for r in read_parquet(tmp_path / "r.parquet", "rejected").to_pylist()}
    assert rows == {f"{path}:2": f"{path}:2: no 'jid' id field",
                    f"{path}:4": rows[f"{path}:4"]}
    assert rows[f"{path}:4"].startswith(f"{path}:4: unparseable JSON (")


def test_left_handed_cell_is_accepted_with_the_same_graph(tmp_path: Path) -> None:
    from crys_pipeline.graphs import knn_graph
    from crys_pipeline.settings import GraphSettings

    rec = dict(tiny_records("jarvis")[0])
    lattice = np.array(rec["lattice_mat"])
    frac = np.array(rec["frac_coords"])
    left = dict(rec, jid="LEFT", lattice_mat=(lattice * [[1], [1], [-1]]).tolist(),
                frac_coords=(frac * [1, 1, -1]).tolist())  # same atoms, c vector reversed: det < 0
    assert np.linalg.det(left["lattice_mat"]) < 0
    (kept, rejected), _ = _ingest_snapshot(tmp_path, [rec, left])
    assert (kept, rejected) == (2, 0)
    right_g = knn_graph(lattice, frac, GraphSettings())
    left_g = knn_graph(np.array(left["lattice_mat"]), np.array(left["frac_coords"]), GraphSettings())
    lengths = [np.sort(np.round(np.linalg.norm(g.edge_vec, axis=1), 6)) for g in (right_g, left_g)]
    np.testing.assert_array_equal(*lengths)


def test_missing_snapshot_dir_is_an_error_not_a_download(tmp_path: Path) -> None:
    from crys_pipeline.cli import main

    missing = tmp_path / "no_such_folder"
    with pytest.raises(FileNotFoundError, match=f"snapshot_dir {missing} is not a folder.*null to download"):
        download.fetch("j", provider="jarvis", jarvis_key="dft_3d_2021", snapshot_dir=missing,
                       download_dir=tmp_path / "dl", out=tmp_path / "m.json")
    code = main(["download", "--source", "j", "--provider", "jarvis", "--jarvis-key", "dft_3d_2021",
                 "--snapshot-dir", str(missing), "--download-dir", str(tmp_path / "dl"), "--out", str(tmp_path / "m")])
    assert code == 1 and not (tmp_path / "dl").exists()


def test_a_truncated_gz_snapshot_is_refused_by_download_and_named_by_ingest(tmp_path: Path) -> None:
    """Issue 23 case 9: a copy or download cut short must not end in a bare EOFError."""
    path = tiny_snapshot_dir(tmp_path / "snap") / download.OFFLINE_FILES["jarvis"]
    path.write_bytes(path.read_bytes()[:20000])
    with pytest.raises(ValueError, match=f"source 'j': snapshot {path} is truncated or damaged \\(EOFError: "
                                         "Compressed file ended before the end-of-stream marker was reached\\); "
                                         "replace it with a complete copy"):
        download.fetch("j", provider="jarvis", jarvis_key="dft_3d_2021", snapshot_dir=path.parent,
                       download_dir=tmp_path / "dl", out=tmp_path / "m.json")
    assert not (tmp_path / "m.json").exists()
    # a manifest written before download checked (same sha256): ingest names the file, the line and the fix
    write_json({"source": "j", "provider": "jarvis", "jarvis_key": "dft_3d_2021", "origin": "local",
                "files": {"structures": {"path": str(path), "format": download.FORMAT_OFFLINE,
                                         "sha256": sha256_file(path), "bytes": path.stat().st_size}}},
               tmp_path / "old.json")
    cfg = default_config()["sources"][SOURCES["jarvis"]]
    with pytest.raises(ValueError, match=f"{path}: truncated or damaged after line \\d+ \\(EOFError: .*\\); "
                                         "replace it with a complete copy and rerun download"):
        ingest.ingest(tmp_path / "old.json", targets=cfg["targets"], subset=None,
                      stratify_target=cfg["stratify_target"], out=tmp_path / "s.parquet",
                      rejected_out=tmp_path / "r.parquet")


def test_a_truncated_figshare_zip_is_refused_by_download(tmp_path: Path) -> None:
    import zipfile

    records = [{"jid": r["jid"]} for r in tiny_records("jarvis")[:40]]
    path = tmp_path / "jdft_3d-8-18-2021.json.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("jdft_3d-8-18-2021.json", json.dumps(records))
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(ValueError, match=f"source 'j': snapshot {path} is truncated or damaged \\(BadZipFile"):
        download.fetch("j", provider="jarvis", jarvis_key="dft_3d_2021", snapshot_dir=tmp_path,
                       download_dir=tmp_path / "dl", out=tmp_path / "m.json")


def test_elements_beyond_the_atom_feature_table_are_rejected_naming_them(tmp_path: Path) -> None:
    """Issue 23 case 3: Rf (Z=104) and Og (Z=118) have no row in the CGCNN table every graph model reads."""
    records = [dict(r) for r in tiny_records("jarvis")[:4]]
    records[1]["species"] = ["Rf", *records[1]["species"][1:]]
    records[2]["species"] = ["Og", *records[2]["species"][1:]]
    (kept, rejected), _ = _ingest_snapshot(tmp_path, records)
    assert (kept, rejected) == (2, 2)
    reasons = {r["material_id"]: r["reason"] for r in read_parquet(tmp_path / "r.parquet", "rejected").to_pylist()}
    assert reasons == {
        records[1]["jid"]: "element Rf (Z=104) is beyond the atom-feature table of the graph models (Z <= 103, "
                           "H to Lr)",
        records[2]["jid"]: "element Og (Z=118) is beyond the atom-feature table of the graph models (Z <= 103, "
                           "H to Lr)"}


def test_every_graph_encoder_reads_the_table_ingest_checks_against() -> None:
    """One limit: ingest's, the shipped table's and every graph variant's atom-feature buffer."""
    import torch

    from crys_pipeline.atom_features import MAX_Z, cgcnn_feature_table
    from crys_pipeline.models import build_model
    from crys_pipeline.models.layers import AtomFeatures
    from crys_pipeline.settings import ModelSettings
    from crys_pipeline.variants import VARIANTS

    table = torch.from_numpy(cgcnn_feature_table())
    assert table.shape[0] == MAX_Z + 1
    for name, spec in VARIANTS.items():
        settings = ModelSettings(hidden_features=8, alignn_layers=1, gcn_layers=1)
        model = build_model(name, settings, atom_table=table, text_dim=8)
        buffers = [m.atom_table for m in model.modules() if isinstance(m, AtomFeatures)]
        assert len(buffers) == (spec.graph_encoder is not None), name
        for buffer in buffers:
            assert buffer.shape[0] == MAX_Z + 1 and buffer[torch.tensor([MAX_Z])].shape == (1, 92), name
    assert ingest.validate(RawRecord("x", np.eye(3) * 4, ["Lr"], [[0, 0, 0]])) is None
