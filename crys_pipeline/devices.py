"""Device resolution: the only module that asks whether CUDA is available."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    """Map a config device name (`auto`, `cpu`, `cuda`, `cuda:N`) to a torch.device.

    `auto` picks CUDA when a usable device exists, else CPU. Asking for CUDA without one is an error,
    not a silent fallback, so a cluster job that lost its GPU fails loudly.
    """
    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    log.info("device: %s", device)
    return device


def set_threads(threads: int) -> None:
    """Limit torch intra-op threads to the cores Snakemake gave the job."""
    if threads > 0:
        torch.set_num_threads(threads)
