"""Stage `train`: fit one variant on one (source, target, regime) with one seed (SPEC.md 5).

The reference recipe: AdamW (lr 1e-3, weight decay 1e-5, no decay for bias/bn/norm parameters),
OneCycleLR stepped every iteration over `epochs * len(train_loader)` (train drops its last partial
batch), MSE on the raw (ingest-transformed) targets, batch 64. Unlike the reference, the model is
selected by the best MAE on the **full** validation set; its test MAE is the result, reported next
to the last-epoch test MAE and (diagnostic only) the min-over-epochs test MAE.

Every epoch ends with an atomic checkpoint (model, optimiser, scheduler, best state, history, RNG
states) in the run folder; a killed job restarted with the same arguments and inputs continues
after its last finished epoch and ends with the same result as an uninterrupted run (on CPU).
The checkpoint is removed once the declared outputs are written.
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crys_pipeline import __version__, io
from crys_pipeline.data import SPLITS, SplitData, TrainingData, load_training_data, make_loader

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters and run settings of one training job (defaults: the reference recipe).

    ``eval_batch_size`` batches the val / test / final passes (eval-mode BatchNorm: the predictions do
    not depend on it beyond float rounding). ``test_each_epoch=False`` skips the per-epoch test pass:
    val still selects the model and the selected state's test MAE is still the result, but the
    history has no test curve (and the summary no last-epoch or min-over-epochs test MAE).
    ``compile=True`` runs the edge-gated convolutions through ``torch.compile`` (a one-off compile per
    job, then far fewer and fused kernels; ``crys_pipeline.models.fused.use_compiled``).
    """

    target: str
    variant: str
    seed: int = 0
    epochs: int = 40
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    head: str = "code"
    hidden_features: int = 256
    alignn_layers: int = 4
    gcn_layers: int = 4
    early_stopping_patience: int = 0
    num_workers: int = 0
    device: str = "auto"
    threads: int = 0
    eval_batch_size: int = 256
    test_each_epoch: bool = True
    compile: bool = False


@dataclass
class Loaders:
    """The loaders of one run: `train` shuffles and drops its last partial batch; the others see everything."""

    train: Any
    train_eval: Any
    val: Any
    test: Any
    generator: torch.Generator


@dataclass
class RunState:
    """Everything that changes from epoch to epoch (and goes into the checkpoint)."""

    epoch: int = 0
    best_epoch: int = 0
    best_val_mae: float = math.inf
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] | None = None
    wall_seconds: float = 0.0
    stop_reason: str = "completed"


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and stdlib random."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_states() -> dict[str, Any]:
    """The global RNG states of torch, CUDA, numpy and stdlib random, as tensors and plain values only
    (so a checkpoint loads with `weights_only=True`)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)}
    states = {"torch": torch.get_rng_state(), "numpy": numpy_state, "random": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what `rng_states` returned."""
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate(states["random"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the reference's parameter groups (bias / bn / norm names not decayed).

    ``FlatAdamW``: each group's parameters and gradients live in one flat buffer, and the update is
    the fused (else multi-tensor) AdamW kernel on those buffers: the same update to float32 rounding,
    a handful of ops per step. Build it after ``model.to(device)``.
    """
    from crys_pipeline.models import param_groups
    from crys_pipeline.optim import FlatAdamW

    return FlatAdamW(param_groups(model, weight_decay), lr=lr)


def make_scheduler(optimizer: torch.optim.Optimizer, max_lr: float, total_steps: int):
    """OneCycleLR of the reference: pct_start 0.3, cosine, div 25, final div 1e4, momentum cycling on."""
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=0.3, anneal_strategy="cos",
        div_factor=25.0, final_div_factor=1e4, cycle_momentum=True,
    )


def _autocast(device: torch.device):
    """bf16 autocast on CUDA, nothing on CPU."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def train_epoch(model, loader, optimizer, scheduler, device: torch.device) -> tuple[float, float]:
    """One pass over the train loader, stepping the scheduler per iteration.

    Returns:
        (mean MSE over the epoch's samples, learning rate of the epoch's last step).
    """
    model.train()
    total, count, lr = torch.zeros((), device=device), 0, math.nan  # summed on the device: no sync per step
    for batch in loader:
        lr = optimizer.param_groups[0]["lr"]
        batch = batch.to(device, non_blocking=True)
        with _autocast(device):
            pred = model(batch)
        loss = torch.nn.functional.mse_loss(pred.float(), batch.y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.detach() * batch.y.shape[0]
        count += batch.y.shape[0]
    return (total.item() / count if count else math.nan), lr


@torch.no_grad()
def predict(model, loader, device: torch.device) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(material ids, targets float64 [n], predictions float64 [n]) over a loader, ids carried per sample."""
    model.eval()
    ids: list[str] = []
    ys: list[np.ndarray] = []
    preds: list[np.ndarray] = []
    for batch in loader:
        ids.extend(batch.material_id)
        ys.append(batch.y.numpy().astype(np.float64))
        batch = batch.to(device, non_blocking=True)
        with _autocast(device):
            pred = model(batch)
        preds.append(pred.float().cpu().numpy().astype(np.float64))
    empty = np.zeros(0, dtype=np.float64)
    return ids, np.concatenate(ys) if ys else empty, np.concatenate(preds) if preds else empty


def mae(y: np.ndarray, pred: np.ndarray) -> float | None:
    """Mean absolute error; None for an empty set or a non-finite result."""
    if y.size == 0:
        return None
    value = float(np.mean(np.abs(y - pred)))
    return value if math.isfinite(value) else None


def make_loaders(data: TrainingData, cfg: TrainConfig, device: torch.device) -> Loaders:
    """Train / train-eval / val / test loaders; the train shuffle follows a seeded generator."""
    generator = torch.Generator().manual_seed(cfg.seed)
    pin = device.type == "cuda"
    train = data.splits["train"]
    drop_last = len(train.ids) >= cfg.batch_size
    if not drop_last:
        log.warning("only %d train materials for batch size %d: keeping the partial batch", len(train.ids),
                    cfg.batch_size)

    def plain(split: SplitData):
        return make_loader(split, cfg.eval_batch_size, num_workers=cfg.num_workers, pin_memory=pin)

    return Loaders(
        train=make_loader(train, cfg.batch_size, shuffle=True, drop_last=drop_last, num_workers=cfg.num_workers,
                          pin_memory=pin, generator=generator),
        train_eval=plain(train), val=plain(data.splits["val"]), test=plain(data.splits["test"]),
        generator=generator,
    )


def build(cfg: TrainConfig, data: TrainingData) -> torch.nn.Module:
    """The variant's model, with the CGCNN atom table for graph encoders and the embeddings' width."""
    from crys_pipeline.models import VARIANTS, build_model

    spec = VARIANTS[cfg.variant]
    atom_table = None
    if spec.graph_encoder is not None:
        from crys_pipeline.atom_features import cgcnn_feature_table

        atom_table = torch.from_numpy(cgcnn_feature_table())
    text = data.splits["train"].text
    return build_model(
        cfg.variant, atom_table=atom_table, text_dim=int(text.shape[1]) if text is not None else 768,
        hidden_features=cfg.hidden_features, alignn_layers=cfg.alignn_layers, gcn_layers=cfg.gcn_layers,
        head=cfg.head,
    )


def fingerprint(cfg: TrainConfig, data: TrainingData, device: torch.device) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: every setting that changes the numbers, and the inputs."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("num_workers", "threads", "device")}
    return {"config": settings, "device": device.type, "inputs": data.hashes, "package_version": __version__}


def save_checkpoint(path: Path, state: RunState, model, optimizer, scheduler, loaders: Loaders,
                    stamp: dict[str, Any]) -> None:
    """Atomically write the end-of-epoch checkpoint."""
    io.write_torch({
        "fingerprint": stamp, "run": asdict(state), "model": model.state_dict(),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "generator": loaders.generator.get_state(), "rng": rng_states(),
    }, path)


def load_checkpoint(path: Path, state: RunState, model, optimizer, scheduler, loaders: Loaders,
                    stamp: dict[str, Any]) -> RunState:
    """Restore a matching checkpoint; returns the fresh `state` when none exists or it does not match."""
    if not path.exists():
        return state
    ckpt = io.read_torch(path)
    if ckpt.get("fingerprint") != stamp:
        log.warning("%s was made with other settings or inputs: starting from scratch", path)
        return state
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    loaders.generator.set_state(ckpt["generator"])
    set_rng_states(ckpt["rng"])
    log.info("resuming after epoch %d from %s", ckpt["run"]["epoch"], path)
    return RunState(**ckpt["run"])


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _epoch_record(epoch: int, loss: float, val_mae: float | None, test_mae: float | None, lr: float,
                  seconds: float) -> dict[str, Any]:
    return {"epoch": epoch, "train_loss": loss if math.isfinite(loss) else None, "val_mae": val_mae,
            "test_mae": test_mae, "lr": lr, "seconds": round(seconds, 3)}


def run_epoch(state: RunState, model, optimizer, scheduler, loaders: Loaders, device: torch.device,
              test_each_epoch: bool = True) -> dict:
    """Train one epoch, evaluate val (and test), update the val-best state; returns the epoch's record."""
    start = time.perf_counter()
    loss, lr = train_epoch(model, loaders.train, optimizer, scheduler, device)
    val_mae = mae(*predict(model, loaders.val, device)[1:])
    test_mae = mae(*predict(model, loaders.test, device)[1:]) if test_each_epoch else None
    state.epoch += 1
    if val_mae is not None and val_mae < state.best_val_mae:
        state.best_epoch, state.best_val_mae, state.best_state = state.epoch, val_mae, _cpu_state(model)
    record = _epoch_record(state.epoch, loss, val_mae, test_mae, lr, time.perf_counter() - start)
    state.history.append(record)
    if not math.isfinite(loss):
        state.stop_reason = f"diverged (non-finite train loss in epoch {state.epoch})"
    log.info("epoch %d: train MSE %.5g, val MAE %s, test MAE %s (best val epoch %d)", state.epoch, loss,
             val_mae, test_mae, state.best_epoch)
    return record


def _should_stop(state: RunState, patience: int) -> bool:
    if state.stop_reason != "completed":
        return True
    if patience > 0 and state.epoch - state.best_epoch >= patience:
        state.stop_reason = f"early stopping (no val improvement for {patience} epochs)"
        return True
    return False


def _write_metrics(history: list[dict[str, Any]], path: Path) -> None:
    io.write_text("".join(json.dumps(rec, sort_keys=True) + "\n" for rec in history), path)


def fit(data: TrainingData, cfg: TrainConfig, out_dir: Path, device: torch.device) -> tuple[Any, RunState, Loaders]:
    """Train (resuming from `out_dir`'s checkpoint when it matches); returns (val-best model, state, loaders).

    Raises:
        ValueError: no train batch or an empty validation set after the drops.
    """
    seed_everything(cfg.seed)
    model = build(cfg, data).to(device)
    if cfg.compile:
        from crys_pipeline.models.fused import use_compiled

        log.info("torch.compile for %d layers (edge-gated convolutions, Linear-BatchNorm-SiLU blocks)", use_compiled(model))
    loaders = make_loaders(data, cfg, device)
    if len(loaders.train) == 0 or not data.splits["val"].ids:
        raise ValueError(f"nothing to train on: {len(data.splits['train'].ids)} train and "
                         f"{len(data.splits['val'].ids)} val materials after the drops")
    optimizer = make_optimizer(model, cfg.learning_rate, cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg.learning_rate, cfg.epochs * len(loaders.train))
    stamp = fingerprint(cfg, data, device)
    ckpt = out_dir / CHECKPOINT
    state = load_checkpoint(ckpt, RunState(history=[]), model, optimizer, scheduler, loaders, stamp)
    from tqdm import tqdm

    clock = state.wall_seconds - time.perf_counter()
    with tqdm(total=cfg.epochs, initial=state.epoch, desc="epochs", disable=not sys.stderr.isatty()) as bar:
        while state.epoch < cfg.epochs and not _should_stop(state, cfg.early_stopping_patience):
            record = run_epoch(state, model, optimizer, scheduler, loaders, device, cfg.test_each_epoch)
            state.wall_seconds = clock + time.perf_counter()
            save_checkpoint(ckpt, state, model, optimizer, scheduler, loaders, stamp)
            _write_metrics(state.history, out_dir / "metrics.jsonl")
            bar.update(1)
            bar.set_postfix(val_mae=record["val_mae"], test_mae=record["test_mae"])
    if state.best_state is not None:
        model.load_state_dict(state.best_state)
    return model, state, loaders


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


def _predictions(model, loaders: Loaders, device: torch.device) -> dict[str, tuple[list[str], np.ndarray, np.ndarray]]:
    return {name: predict(model, loader, device)
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
    io.write_parquet(table, path, "predictions", params, extra)


def _versions() -> dict[str, str]:
    import torch_geometric

    return {"crys_pipeline": __version__, "torch": torch.__version__, "torch_geometric": torch_geometric.__version__,
            "python": sys.version.split()[0], "numpy": np.__version__}


def _model_json(model, cfg: TrainConfig, data: TrainingData, state: RunState, device: torch.device) -> dict:
    from crys_pipeline.models import encoder_settings

    return {
        "config": model.config, "graph_encoder": encoder_settings(model), "variant": cfg.variant, "target": cfg.target, "source": data.source,
        "regime": data.split_meta["regime"], "seed": cfg.seed, "best_epoch": state.best_epoch,
        "train_config": asdict(cfg), "versions": _versions(), "device": str(device),
        "graph_params": _jsonable(data.graph_meta.get("params", {})),
        "graph_meta": _jsonable(data.graph_meta), "embedding_attrs": _jsonable(data.embed_attrs),
        "split": data.split_meta, "split_hash": data.split_meta["hash"], "data_hashes": data.hashes,
    }


def _encoder_name(attrs: dict[str, Any]) -> str | None:
    """The text encoder named in the embeddings attributes (None for graph-only runs)."""
    for key in ("encoder", "model_name", "model"):
        if attrs.get(key):
            return str(_jsonable(attrs[key]))
    return None


def _summary(cfg: TrainConfig, data: TrainingData, state: RunState, preds: dict, wall: float) -> dict:
    tests = [h["test_mae"] for h in state.history if h["test_mae"] is not None]
    last = state.history[-1] if state.history else {}
    return {
        "source": data.source, "target": cfg.target, "variant": cfg.variant, "regime": data.split_meta["regime"],
        "seed": cfg.seed, "test_mae": mae(*preds["test"][1:]), "val_mae": mae(*preds["val"][1:]),
        "train_mae": mae(*preds["train"][1:]), "last_test_mae": last.get("test_mae"),
        "min_test_mae": min(tests) if tests else None, "best_epoch": state.best_epoch,
        "epochs_run": state.epoch, "epochs": cfg.epochs, "stop_reason": state.stop_reason,
        **{f"n_{name}": len(data.splits[name].ids) for name in SPLITS},
        "dropped": data.dropped, "encoder": _encoder_name(data.embed_attrs),
        "text_variant": data.embed_attrs.get("variant"), "split_hash": data.split_meta["hash"],
        "split_method": data.split_meta["method"], "wall_seconds": round(wall, 3),
    }


def write_outputs(model, cfg: TrainConfig, data: TrainingData, state: RunState, loaders: Loaders,
                  out_dir: Path, device: torch.device, wall: float) -> dict[str, Any]:
    """model.pt, model.json, predictions.parquet and summary.json of the val-best model; returns the summary.

    `wall` is the job's wall time (input loading plus every epoch, over all resumed sessions).
    """
    preds = _predictions(model, loaders, device)
    extra = {"source": data.source, "target": cfg.target, "variant": cfg.variant,
             "regime": data.split_meta["regime"], "seed": cfg.seed, "split_hash": data.split_meta["hash"]}
    _write_predictions(preds, out_dir / "predictions.parquet", asdict(cfg), extra)
    io.write_torch(model.state_dict(), out_dir / "model.pt")
    model_json = {**_model_json(model, cfg, data, state, device), "model_sha256": io.sha256_file(out_dir / "model.pt")}
    io.write_json(model_json, out_dir / "model.json")
    summary = _summary(cfg, data, state, preds, wall)
    files = ("model.pt", "model.json", "metrics.jsonl", "predictions.parquet")
    summary["files"] = {name: io.sha256_file(out_dir / name) for name in files}
    io.write_json(summary, out_dir / "summary.json")
    return summary


def train(
    structures: Path,
    split: Path,
    graphs: Path | None,
    embeddings: Path | None,
    out_dir: Path,
    cfg: TrainConfig,
) -> dict[str, Any]:
    """Run one training job end to end; returns the summary written to `out_dir/summary.json`.

    Args:
        structures: results/structures/{source}.parquet.
        split: results/splits/{source}/{target}/{regime}.json.
        graphs: graph shard folder (graph variants) or None.
        embeddings: embeddings HDF5 (text variants) or None.
        out_dir: run folder; holds the checkpoint while training.
        cfg: hyper-parameters and run settings.

    Raises:
        ValueError: the inputs do not fit the variant, or nothing is left to train on.
        RuntimeError: the run diverged (non-finite loss); the outputs are written first, for inspection.
    """
    from crys_pipeline.devices import resolve_device, set_threads
    from crys_pipeline.models import VARIANTS

    if cfg.variant not in VARIANTS:
        raise ValueError(f"unknown variant {cfg.variant!r}; choose from {sorted(VARIANTS)}")
    spec = VARIANTS[cfg.variant]
    if (graphs is None) != (spec.graph_encoder is None) or (embeddings is None) != (spec.text_variant is None):
        raise ValueError(f"variant {cfg.variant} needs graphs={spec.graph_encoder is not None} and "
                         f"embeddings={spec.text_variant is not None}; got graphs={graphs}, embeddings={embeddings}")
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = load_training_data(structures, split, cfg.target, graphs, embeddings, spec.text_variant)
    load_seconds = time.perf_counter() - start
    model, state, loaders = fit(data, cfg, out_dir, device)
    summary = write_outputs(model, cfg, data, state, loaders, out_dir, device, load_seconds + state.wall_seconds)
    (out_dir / CHECKPOINT).unlink(missing_ok=True)
    if summary["stop_reason"].startswith("diverged"):
        raise RuntimeError(f"{out_dir}: training {summary['stop_reason']}; summary.json records it. Look for extreme "
                           f"{cfg.target} values in {structures} or lower the learning rate, then rerun")
    log.info("%s/%s %s seed %d: val-selected test MAE %s (epoch %d), last %s, min %s", data.source, cfg.target,
             cfg.variant, cfg.seed, summary["test_mae"], summary["best_epoch"], summary["last_test_mae"],
             summary["min_test_mae"])
    return summary
