"""The end-of-epoch checkpoint of a training run: what it holds, when it may be resumed.

A checkpoint holds the model, optimiser, scheduler, shuffle generator, global RNG states and the
`RunState` (epoch, best state, history), as tensors and plain values only (it loads with
`weights_only=True`), with a fingerprint of every setting and input that changes the numbers: a
checkpoint of other settings or inputs is not resumed. The checkpoint is no Snakemake output, so
nothing would ever replace a damaged one: an unreadable checkpoint (truncated, garbage, or holding
objects other than tensors) is moved aside, named in a warning, and training starts over from epoch 0.
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crys_pipeline import __version__, io, settings
from crys_pipeline.train.data import TrainingData
from crys_pipeline.train.loop import RunState, Session, TrainConfig

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
#: Suffix of a checkpoint that could not be read, moved aside so that it does not block the rerun.
UNREADABLE = ".unreadable"
#: What a checkpoint written by `save_checkpoint` holds.
KEYS = ("fingerprint", "run", "model", "optimizer", "scheduler", "generator", "rng")


def rng_states() -> dict[str, Any]:
    """The global RNG states of torch, CUDA, numpy and stdlib random.

    As tensors and plain values only, so that a checkpoint loads with `weights_only=True`.
    """
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


def fingerprint(cfg: TrainConfig, data: TrainingData, device: torch.device) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: every setting that changes the numbers, and the inputs."""
    numeric = {k: v for k, v in settings.stamp(cfg).items() if k not in ("num_workers", "threads", "device")}
    return {"config": numeric, "device": device.type, "inputs": data.hashes, "package_version": __version__}


def save_checkpoint(path: Path, state: RunState, session: Session, stamp: dict[str, Any]) -> None:
    """Atomically write the end-of-epoch checkpoint of `session` (with the fingerprint `stamp`)."""
    io.write_torch({
        "fingerprint": stamp, "run": asdict(state), "model": session.model.state_dict(),
        "optimizer": session.optimizer.state_dict(), "scheduler": session.scheduler.state_dict(),
        "generator": session.loaders.generator.get_state(), "rng": rng_states(),
    }, path)


def _read_or_move_aside(path: Path) -> dict[str, Any] | None:
    """The checkpoint at `path`, or None after moving an unreadable one aside (with a warning naming both files)."""
    try:
        ckpt = io.read_torch(path)
    except io.ArtifactError as exc:
        ckpt, problem = None, f"{type(exc.__cause__ or exc).__name__}: not a tensors-only torch file this package wrote"
    else:
        missing = [key for key in KEYS if not isinstance(ckpt, dict) or key not in ckpt]
        problem = f"not a checkpoint of `crys-pipeline train`: no {missing}" if missing else None
    if problem is None:
        return ckpt
    aside = path.with_name(path.name + UNREADABLE)
    path.replace(aside)
    log.warning("%s: unreadable checkpoint (%s); moved aside to %s: training starts over from epoch 0 (delete %s "
                "once you no longer need it)", path, problem, aside, aside)
    return None


def load_checkpoint(path: Path, state: RunState, session: Session, stamp: dict[str, Any]) -> RunState:
    """Restore the checkpoint at `path` into `session` when it matches `stamp`; returns the run state to go on from.

    Without a checkpoint, with one of other settings or inputs, or with an unreadable one, the fresh `state`.

    An unreadable checkpoint is moved aside to `checkpoint.pt.unreadable` (never loaded as code), so the
    run and every later rerun start from epoch 0 instead of failing on it.
    """
    if not path.exists():
        return state
    ckpt = _read_or_move_aside(path)
    if ckpt is None:
        return state
    if ckpt["fingerprint"] != stamp:
        log.warning("%s was made with other settings or inputs: starting from scratch", path)
        return state
    session.model.load_state_dict(ckpt["model"])
    session.optimizer.load_state_dict(ckpt["optimizer"])
    session.scheduler.load_state_dict(ckpt["scheduler"])
    session.loaders.generator.set_state(ckpt["generator"])
    set_rng_states(ckpt["rng"])
    log.info("resuming after epoch %d from %s", ckpt["run"]["epoch"], path)
    return RunState(**ckpt["run"])
