"""The training loop's parts: settings, model, loaders, optimiser and schedule, one epoch, evaluation.

The reference recipe: AdamW (lr 1e-3, weight decay 1e-5, no decay for bias/bn/norm parameters),
OneCycleLR stepped every iteration over `epochs * len(train_loader)` (train drops its last partial
batch), MSE on the raw (ingest-transformed) targets, batch 64; `target_scaling: standardize` computes the MSE
on (y - mean) / std of the training split instead (the model's `TargetScale` maps back to the unit). The
val-best state is kept in `RunState` after every epoch. Nothing here reads or writes files (`checkpoint`, `outputs` do).
"""

from __future__ import annotations

import logging
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from crys_pipeline.data import SplitData, TrainingData, make_loader
from crys_pipeline.settings import TrainSettings
from crys_pipeline.variants import variant

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TrainConfig(TrainSettings):
    """One training job: the recipe plus which target, variant and model seed it fits.

    The recipe is every field of ``TrainSettings``, the only home of its defaults; `threads` are the job's
    CPU threads.

    ``eval_batch_size`` batches the val / test / final passes (eval-mode BatchNorm: the predictions do
    not depend on it beyond float rounding). ``test_each_epoch=False`` skips the per-epoch test pass:
    val still selects the model and the selected state's test MAE is still the result, but the
    history has no test curve (and the summary no last-epoch or min-over-epochs test MAE).
    ``compile=True`` runs the edge-gated convolutions through ``torch.compile`` (a one-off compile per
    job, then far fewer and fused kernels; ``crys_pipeline.models.fused.use_compiled``).
    """

    target: str
    variant: str
    seed: int
    threads: int = 0  # torch intra-op threads; 0 = torch's default


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
            pred = model.standardized(batch)
        loss = torch.nn.functional.mse_loss(pred.float(), model.target_scale.normalize(batch.y))
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


def target_scaling(method: str, y_train: np.ndarray) -> dict[str, Any]:
    """The target scaling {method, shift, scale} fitted on the training targets (``models.TargetScale``).

    `standardize`: the mean and the sample standard deviation (1 where it is 0 or undefined, so that a
    constant target still trains); `none`: the identity. Values are rounded to float32, the precision of the
    model's buffers, so that model.json and model.pt hold the same numbers.
    """
    if method == "none":
        return {"method": method, "shift": 0.0, "scale": 1.0}
    std = float(np.std(y_train, ddof=1)) if y_train.size > 1 else 0.0
    shift, scale = np.float32(np.mean(y_train)), np.float32(std if std > 0 else 1.0)
    return {"method": method, "shift": float(shift), "scale": float(scale)}


def build(cfg: TrainConfig, data: TrainingData) -> torch.nn.Module:
    """The variant's model, with the CGCNN atom table for graph encoders, the embeddings' width and the scaling."""
    from crys_pipeline.models import build_model

    spec = variant(cfg.variant)
    atom_table = None
    if spec.graph_encoder is not None:
        from crys_pipeline.atom_features import cgcnn_feature_table

        atom_table = torch.from_numpy(cgcnn_feature_table())
    text = data.splits["train"].text
    return build_model(
        cfg.variant, atom_table=atom_table, text_dim=int(text.shape[1]) if text is not None else 768,
        hidden_features=cfg.hidden_features, alignn_layers=cfg.alignn_layers, gcn_layers=cfg.gcn_layers,
        head=cfg.head, target_scaling=target_scaling(cfg.target_scaling, data.splits["train"].y),
        fusion_heads=cfg.fusion_heads,
    )


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


def should_stop(state: RunState, patience: int | None) -> bool:
    """Whether training ends after this epoch: stopped already, or no val improvement for `patience` epochs.

    Early stopping records its reason in `state.stop_reason`.
    """
    if state.stop_reason != "completed":
        return True
    if patience and state.epoch - state.best_epoch >= patience:
        state.stop_reason = f"early stopping (no val improvement for {patience} epochs)"
        return True
    return False
