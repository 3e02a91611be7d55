"""Shared fixtures: real structures from ../shared/data ingested once per test session."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CRYS_SHARED_DATA", REPO.parent / "shared" / "data"))
TINY = {"jarvis": "jarvis_dft3d_2021_tiny.jsonl", "mp": "mp_2018_tiny.jsonl"}
SOURCES = {"jarvis": "jarvis_dft_3d_2021", "mp": "mp_2018"}


def default_config(*overlays: str) -> dict:
    """The repository's config.yaml with `overlays` (paths relative to the repository) merged over it.

    The merge is snakemake's own (`--configfile` over `configfile:`), so tests see what a run sees.
    """
    from snakemake.utils import update_config

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    for overlay in overlays:
        update_config(cfg, yaml.safe_load((REPO / overlay).read_text()))
    return cfg


def absolute_snapshots(cfg: dict) -> dict:
    """`cfg` with every relative `snapshot_dir` resolved against the repository (as if run from it)."""
    for source in cfg.get("sources", {}).values():  # an overlay may leave the sources alone
        if source.get("snapshot_dir") and not Path(source["snapshot_dir"]).is_absolute():
            source["snapshot_dir"] = str((REPO / source["snapshot_dir"]).resolve())
    return cfg


def snakemake_in(workdir: Path, *args: str, config: dict | None = None,
                 timeout: int = 300) -> subprocess.CompletedProcess:
    """The venv's snakemake on the repository's Snakefile, in its own working directory.

    Tests never run the workflow in the checkout: its results/, resources/, logs/ and .snakemake/
    belong to the user (the README's main command fills them). `workdir` gets `config` as its
    config.yaml (by default the repository's, with snapshot folders made absolute) unless it has one.
    The workflow profile (profiles/default) still applies: snakemake finds it beside the Snakefile.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    if config is not None or not (workdir / "config.yaml").exists():
        cfg = absolute_snapshots(config if config is not None else default_config())
        (workdir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    cmd = [str(bindir / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def tiny_snapshot_dir(dest: Path) -> Path:
    """A snapshot folder whose offline files are the 100-record tiny subsets (gzipped)."""
    from crys_pipeline.download import OFFLINE_FILES

    dest.mkdir(parents=True, exist_ok=True)
    for provider, name in TINY.items():
        with open(SHARED_DATA / name, "rb") as src, gzip.open(dest / OFFLINE_FILES[provider], "wb") as dst:
            shutil.copyfileobj(src, dst)
    return dest


def ingest_tiny(provider: str, workdir: Path) -> Path:
    """Run download + ingest on a tiny snapshot; returns the structures Parquet path."""
    from crys_pipeline import download, ingest

    snap = tiny_snapshot_dir(workdir / "snapshot")
    source = SOURCES[provider]
    cfg = default_config()["sources"][source]
    manifest = workdir / f"{source}.json"
    download.fetch(source, provider=provider, jarvis_key=cfg["jarvis_key"], snapshot_dir=snap,
                   download_dir=workdir / "dl", out=manifest)
    out = workdir / f"{source}.parquet"
    ingest.ingest(manifest, targets=cfg["targets"], subset=None, stratify_target=cfg["stratify_target"],
                  out=out, rejected_out=workdir / f"{source}.rejected.parquet")
    return out


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real JARVIS / MP snapshots)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data folder {SHARED_DATA} not found (set CRYS_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def jarvis_structures(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Structures Parquet of the 100 real JARVIS tiny records."""
    return ingest_tiny("jarvis", tmp_path_factory.mktemp("jarvis"))


@pytest.fixture(scope="session")
def mp_structures(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Structures Parquet of the 100 real MP tiny records."""
    return ingest_tiny("mp", tmp_path_factory.mktemp("mp"))


def tiny_records(provider: str) -> list[dict]:
    """The raw tiny JSON-lines records of a provider."""
    return [json.loads(line) for line in (SHARED_DATA / TINY[provider]).read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def batch():
    """The first 16 crystals of jarvis_dft3d_2021_tiny.jsonl as one batch (graphs by crys_pipeline.graphs)."""
    from train_reference import real_batch

    return real_batch(16)


@pytest.fixture
def one_thread():
    """Run a test on one torch thread (small graphs; avoids oversubscribing a loaded machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def overfit_mae(model, batch, y, steps: int) -> float:
    """MAE on `batch` (eval mode) after `steps` Adam steps of L1 loss on it alone, lr 5e-3 cosine-decayed.

    Cosine decay lets the fit settle: at a constant rate the last step's MAE jumps by 2-4x between steps, and
    where it lands differed between machines (OpenBLAS kernels break shell ties differently).
    """
    import torch

    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.l1_loss(model(batch), y).backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        return (model.eval()(batch) - y).abs().mean().item()

