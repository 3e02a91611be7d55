"""The declared outputs of a training run.

They are metrics.jsonl, predictions.parquet, model.pt, model.json and summary.json (the val-selected
model's results, with the sha256 of the other files).

The two JSON files follow the layouts `schemas.RUN_MODEL` and `schemas.RUN_SUMMARY`, checked on write
here and on read by every reader (`io.read_json(..., layout=...)`).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crys_pipeline import __version__, evidence, io
from crys_pipeline.run_id import RunId
from crys_pipeline.schemas import RUN_MODEL, RUN_SUMMARY
from crys_pipeline.settings import stamp
from crys_pipeline.train.data import SPLITS, TrainingData
from crys_pipeline.train.loop import RunState, Session, TrainConfig, mae, predict_loader


def run_id(cfg: TrainConfig, data: TrainingData) -> RunId:
    """The run a job trains: its target, variant and seed, and the source and regime of its data."""
    return RunId(data.source, cfg.target, cfg.variant, data.split_meta["regime"], cfg.seed)


def write_metrics(history: list[dict[str, Any]], path: Path) -> None:
    """Write metrics.jsonl: one JSON object per epoch record, keys sorted."""
    io.write_text("".join(json.dumps(rec, sort_keys=True) + "\n" for rec in history), path)


def _jsonable(value: Any) -> Any:
    """HDF5 / numpy attribute values as plain JSON types."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    return value


def _predictions(session: Session) -> dict[str, tuple[list[str], np.ndarray, np.ndarray]]:
    loaders = session.loaders
    return {name: predict_loader(session.model, loader, session.device)
            for name, loader in (("train", loaders.train_eval), ("val", loaders.val), ("test", loaders.test))}


def _write_predictions(preds: dict, path: Path, params: dict[str, Any], extra: dict[str, Any]) -> None:
    import pyarrow as pa

    ids, splits, ys, ps = [], [], [], []
    for name in SPLITS:
        mids, y, p = preds[name]
        ids += mids
        splits += [name] * len(mids)
        ys.append(y)
        ps.append(p)
    table = pa.table({"material_id": ids, "split": splits, "target": np.concatenate(ys),
                      "prediction": np.concatenate(ps)})
    io.write_parquet(table, path, kind="predictions", params=params, extra=extra)


def _versions() -> dict[str, str]:
    import torch_geometric

    return {"crys_pipeline": __version__, "torch": torch.__version__, "torch_geometric": torch_geometric.__version__,
            "python": sys.version.split()[0], "numpy": np.__version__}


def _model_json(session: Session, state: RunState, cfg: TrainConfig, data: TrainingData) -> dict:
    """The content of model.json (layout `schemas.RUN_MODEL`) without `model_sha256`.

    The graph shards' params are `graph_params`, the rest of their stamp `graph_meta`.
    """
    from crys_pipeline.models import encoder_settings

    shard_meta = _jsonable(data.graph_meta)
    return {
        **asdict(run_id(cfg, data)), "config": session.model.config, "graph_encoder": encoder_settings(session.model),
        "best_epoch": state.best_epoch, "train_config": stamp(cfg), "versions": _versions(),
        "device": str(session.device),
        "graph_params": shard_meta.pop("params", {}), "graph_meta": shard_meta,
        "embedding_attrs": _jsonable(data.embed_attrs),
        "split": data.split_meta, "split_hash": data.split_meta["hash"], "data_hashes": data.hashes,
    }


def _encoder_name(attrs: dict[str, Any]) -> str | None:
    """The text encoder named in the embeddings attributes (None for graph-only runs)."""
    for key in ("encoder", "model_name", "model"):
        if attrs.get(key):
            return str(_jsonable(attrs[key]))
    return None


def baseline_summary(preds: dict[str, tuple[list[str], np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """The constant baseline's value and MAEs beside the model's, and whether the model underfits.

    The run is `underfit` unless the paired interval of its training errors against the baseline's lies
    below 0 (``evidence``): its training MAE is not clearly below the constant's.
    """
    y_train = preds["train"][1]
    value = evidence.constant_baseline(y_train)
    fit = evidence.below(preds["train"][2] - y_train, value - y_train)
    return {"baseline": evidence.BASELINE, "baseline_value": value if np.isfinite(value) else None,
            **{f"baseline_{name}_mae": mae(preds[name][1], np.full_like(preds[name][1], value))
               for name in SPLITS},
            "underfit": fit.verdict != evidence.LOWER}


def _summary(cfg: TrainConfig, data: TrainingData, state: RunState, preds: dict, wall: float) -> dict:
    tests = [h["test_mae"] for h in state.history if h["test_mae"] is not None]
    last = state.history[-1] if state.history else {}
    return {
        **asdict(run_id(cfg, data)), "test_mae": mae(*preds["test"][1:]), "val_mae": mae(*preds["val"][1:]),
        "train_mae": mae(*preds["train"][1:]), **baseline_summary(preds), "target_scaling": cfg.target_scaling,
        "last_test_mae": last.get("test_mae"),
        "min_test_mae": min(tests) if tests else None, "best_epoch": state.best_epoch,
        "epochs_run": state.epoch, "epochs": cfg.epochs, "stop_reason": state.stop_reason,
        **{f"n_{name}": len(data.splits[name].ids) for name in SPLITS},
        "dropped": data.dropped, "encoder": _encoder_name(data.embed_attrs),
        "text_variant": data.embed_attrs.get("text_view"), "split_hash": data.split_meta["hash"],
        "split_method": data.split_meta["method"], "wall_seconds": round(wall, 3),
    }


def write_outputs(session: Session, state: RunState, *, cfg: TrainConfig, data: TrainingData, out_dir: Path,
                  wall: float) -> dict[str, Any]:
    """model.pt, model.json, predictions.parquet and summary.json of the session's model; returns the summary.

    The session's model is the val-best one (``fit`` loads it).

    model.json and summary.json are checked against their layouts (`schemas.RUN_MODEL`, `schemas.RUN_SUMMARY`)
    before they are written.

    `wall` is the job's wall time (input loading plus every epoch, over all resumed sessions).
    """
    preds = _predictions(session)
    extra = {**asdict(run_id(cfg, data)), "split_hash": data.split_meta["hash"]}
    _write_predictions(preds, out_dir / "predictions.parquet", stamp(cfg), extra)
    io.write_torch(session.model.state_dict(), out_dir / "model.pt")
    model_json = {**_model_json(session, state, cfg, data), "model_sha256": io.sha256_file(out_dir / "model.pt")}
    io.write_json(model_json, out_dir / "model.json", layout=RUN_MODEL)
    summary = _summary(cfg, data, state, preds, wall)
    files = ("model.pt", "model.json", "metrics.jsonl", "predictions.parquet")
    summary["files"] = {name: io.sha256_file(out_dir / name) for name in files}
    io.write_json(summary, out_dir / "summary.json", layout=RUN_SUMMARY)
    return summary
