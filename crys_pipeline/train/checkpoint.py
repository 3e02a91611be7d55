"""The end-of-epoch checkpoint of a training run: what it holds, when it may be resumed.

A checkpoint holds the model, optimiser, scheduler, shuffle generator, global RNG states and the
`RunState` (epoch, best state, history), as tensors and plain values only (it loads with
`weights_only=True`), with a fingerprint of every setting and input that changes the numbers: a
checkpoint of other settings or inputs is not resumed.
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
from crys_pipeline.data import TrainingData
from crys_pipeline.train.loop import Loaders, RunState, TrainConfig

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"

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
