"""Tests of `crys_pipeline.devices`: device choice and the CPU allocator settings of training jobs."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest
import torch

from crys_pipeline import devices

#: Four 31 MB blocks alive at once, then freed, ten times over (the shape of a CPU training step at width 64
#: on a 64-crystal line graph); prints the minor page faults of those ten steps.
_STEPS = """
import resource, sys
import numpy as np
if sys.argv[1] == "keep":
    from crys_pipeline.devices import keep_cpu_memory
    assert keep_cpu_memory()
def step():
    live = [np.ones(7_800_000, dtype=np.float32) for _ in range(4)]
    del live
step(); step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", _STEPS, mode], capture_output=True, text=True, check=True)
    return int(done.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_kept_memory_is_reused_without_page_faults() -> None:
    """Under glibc's defaults the freed blocks go back to the system and are faulted in again at every step."""
    assert _page_faults("default") > 5_000
    assert _page_faults("keep") < 100


def test_keep_cpu_memory_changes_nothing_off_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert devices.keep_cpu_memory() is False


def test_resolve_device() -> None:
    assert devices.resolve_device("cpu") == torch.device("cpu")
    assert devices.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            devices.resolve_device("cuda")
