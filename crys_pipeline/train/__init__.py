"""Stage `train`: fit one variant on one (source, target, regime) with one seed (docs/method.md §6).

The reference recipe (`loop`): AdamW (lr 1e-3, weight decay 1e-5, no decay for bias/bn/norm
parameters), OneCycleLR stepped every iteration over `epochs * len(train_loader)` (train drops its
last partial batch), MSE on the raw (ingest-transformed) targets, batch 64. Unlike the reference, the
model is selected by the best MAE on the **full** validation set; its test MAE is the result, reported
next to the last-epoch test MAE and (diagnostic only) the min-over-epochs test MAE.

Every epoch ends with an atomic checkpoint (`checkpoint`: model, optimiser, scheduler, best state,
history, RNG states) in the run folder; a killed job restarted with the same arguments and inputs
continues after its last finished epoch and ends with the same result as an uninterrupted run (on
CPU). The checkpoint is removed once the declared outputs (`outputs`) are written.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from crys_pipeline.train.checkpoint import (
    CHECKPOINT,
    fingerprint,
    load_checkpoint,
    rng_states,
    save_checkpoint,
    set_rng_states,
)
from crys_pipeline.train.data import TrainingData, load_training_data
from crys_pipeline.train.loop import (
    Loaders,
    RunState,
    Session,
    TrainConfig,
    build,
    mae,
    make_loaders,
    predict_loader,
    run_epoch,
    seed_everything,
    should_stop,
    train_epoch,
)
from crys_pipeline.train.optim import make_optimizer, make_scheduler, param_groups
from crys_pipeline.train.outputs import run_id, write_metrics, write_outputs
from crys_pipeline.variants import variant

__all__ = [
    "CHECKPOINT", "Loaders", "RunState", "Session", "TrainConfig", "build", "fingerprint", "fit", "load_checkpoint",
    "mae", "make_loaders", "make_optimizer", "make_scheduler", "param_groups", "predict_loader", "rng_states",
    "run_epoch", "save_checkpoint", "seed_everything", "set_rng_states", "train", "train_epoch", "write_outputs",
]

log = logging.getLogger(__name__)


def fit(data: TrainingData, cfg: TrainConfig, out_dir: Path, device: torch.device) -> tuple[Session, RunState]:
    """Train (resuming from `out_dir`'s checkpoint when it matches); returns (session of the val-best model, state).

    Raises:
        ValueError: no train batch or an empty validation set after the drops.
    """
    seed_everything(cfg.seed)
    model = build(cfg, data).to(device)
    if cfg.compile:
        from crys_pipeline.models.fused import use_compiled

        log.info("torch.compile for %d layers (edge-gated convolutions, Linear-BatchNorm-SiLU blocks)",
                 use_compiled(model))
    loaders = make_loaders(data, cfg, device)
    if len(loaders.train) == 0 or not data.splits["val"].ids:
        raise ValueError(f"nothing to train on: {len(data.splits['train'].ids)} train and "
                         f"{len(data.splits['val'].ids)} val materials after the drops")
    optimizer = make_optimizer(model, cfg.learning_rate, cfg.weight_decay)
    session = Session(model, optimizer, make_scheduler(optimizer, cfg.learning_rate, cfg.epochs * len(loaders.train)),
                      loaders, device)
    stamp = fingerprint(cfg, data, device)
    ckpt = out_dir / CHECKPOINT
    state = load_checkpoint(ckpt, RunState(history=[]), session, stamp)
    from tqdm import tqdm

    clock = state.wall_seconds - time.perf_counter()
    with tqdm(total=cfg.epochs, initial=state.epoch, desc="epochs", disable=not sys.stderr.isatty()) as bar:
        while state.epoch < cfg.epochs and not should_stop(state, cfg.early_stopping_patience):
            record = run_epoch(state, session, test_each_epoch=cfg.test_each_epoch)
            state.wall_seconds = clock + time.perf_counter()
            save_checkpoint(ckpt, state, session, stamp)
            write_metrics(state.history, out_dir / "metrics.jsonl")
            bar.update(1)
            bar.set_postfix(val_mae=record["val_mae"], test_mae=record["test_mae"])
    if state.best_state is not None:
        model.load_state_dict(state.best_state)
    return session, state


def train(
    structures: Path,
    *,
    split: Path,
    graphs: Path | None,
    embeddings: Path | None,
    out_dir: Path,
    cfg: TrainConfig,
    tokens: Path | None = None,
) -> dict[str, Any]:
    """Run one training job end to end; returns the summary written to `out_dir/summary.json`.

    Args:
        structures: results/structures/{source}.parquet.
        split: results/splits/{source}/{target}/{regime}.json.
        graphs: graph shard folder (graph variants) or None.
        embeddings: embeddings HDF5 (variants with text) or None.
        out_dir: run folder; holds the checkpoint while training.
        cfg: hyper-parameters and run settings.
        tokens: token-states HDF5 (cross-attention variants) or None.

    Raises:
        ValueError: the inputs do not fit the variant, or nothing is left to train on.
        RuntimeError: the run diverged (non-finite loss); the outputs are written first, for inspection.
    """
    from crys_pipeline.devices import keep_cpu_memory, resolve_device, set_threads

    spec = variant(cfg.variant)
    needs = {"graphs": spec.graph_encoder is not None, "embeddings": spec.text_view is not None,
             "tokens": spec.tokens is not None}
    given = {"graphs": graphs, "embeddings": embeddings, "tokens": tokens}
    if any((given[k] is not None) != need for k, need in needs.items()):
        raise ValueError(f"variant {cfg.variant} needs {', '.join(f'{k}={v}' for k, v in needs.items())}; got "
                         f"{', '.join(f'{k}={v}' for k, v in given.items())}")
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        keep_cpu_memory()
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = load_training_data(structures, split=split, target=cfg.target, graphs=graphs,
                              embeddings=embeddings, text_view=spec.text_view, tokens=tokens,
                              token_set=spec.tokens)
    load_seconds = time.perf_counter() - start
    session, state = fit(data, cfg, out_dir, device)
    summary = write_outputs(session, state, cfg=cfg, data=data, out_dir=out_dir, wall=load_seconds + state.wall_seconds)
    (out_dir / CHECKPOINT).unlink(missing_ok=True)
    if summary["stop_reason"].startswith("diverged"):
        raise RuntimeError(f"{out_dir}: training {summary['stop_reason']}; summary.json records it. Look for extreme "
                           f"{cfg.target} values in {structures} or lower the learning rate, then rerun")
    log.info("%s: val-selected test MAE %s (epoch %d), last %s, min %s", run_id(cfg, data).key, summary["test_mae"],
             summary["best_epoch"], summary["last_test_mae"], summary["min_test_mae"])
    return summary
