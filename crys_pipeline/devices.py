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


#: glibc ``mallopt`` parameter numbers (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Largest fixed mmap threshold glibc accepts on 64-bit (HEAP_MAX_SIZE / 2).
MMAP_THRESHOLD = 32 * 2**20
#: Free memory at the top of the heap kept for reuse before glibc returns it to the system.
TRIM_THRESHOLD = 2**30


def keep_cpu_memory() -> bool:
    """Let glibc keep freed tensor memory for reuse instead of unmapping it and faulting it in again.

    A CPU training step allocates and frees the same few dozen [E, H]-sized tensors every step (31 MB each
    on a 64-crystal line graph at width 64). Under glibc's defaults such a block is often mmap-ed anew and
    every one of its pages is faulted in and zeroed at each step, or freed memory at the top of the heap is
    trimmed and faulted in again. Fixing the mmap threshold at its maximum (32 MB) and trimming only above
    1 GiB of free memory reuses those blocks (measured on a 2-core EPYC: about 12 % less time per step at
    width 64, a tenth more peak memory). Blocks over 32 MB are still mapped and returned at once.

    Returns:
        whether the settings were applied (False off glibc, e.g. macOS or musl: nothing changes).
    """
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    done = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    log.debug("glibc mallopt mmap threshold %d, trim threshold %d: %s", MMAP_THRESHOLD, TRIM_THRESHOLD, done)
    return done
