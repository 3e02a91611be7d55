"""GPU check: reference vs fused training throughput at paper width, GPU memory, a short real training.

Run by bench/gpu_check.sh on a machine with one GPU from a source checkout (PYTHONPATH = the
repository), without pymatgen, polars, snakemake or network. Needs the real data files of
../shared/data (or --data): jarvis_dft3d_2021_tiny.jsonl for the throughput batch (the first 64
crystals, as bench/bench_train_throughput.py), jarvis_dft3d_2021_structures.jsonl.gz and
jarvis_dft3d_2021_targets_splits.csv.gz for the training.

1. crystals/s of one training step (forward, backward, AdamW) of CrysMMNet: reference code and
   optimizer, the fused ones, and the fused ones through torch.compile (train.compile); same batch and
   weights, bf16 autocast as in training; peak GPU memory of the fused path.
2. A short `crys_pipeline.train.fit` of the graph-only ALIGNN on the first n crystals of each official
   formation-energy split (graphs by crys_pipeline.graphs, 16 processes): val-selected val/test MAE,
   seconds per epoch.

Without CUDA it runs the same code on the CPU at tiny sizes (a correctness check of the script).
Writes gpu_check.json (and the training's outputs) under --out.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train_throughput as btt  # the benchmark beside this file
import train_reference as parity  # the parity reference the tests compare against

from crys_pipeline.settings import ModelSettings

ROOT = Path(__file__).resolve().parents[1]
TARGET = "formation_energy_peratom"
SPLIT_NAMES = ("train", "val", "test")
SIZES = {"cuda": {"width": 256, "layers": 4, "batch": 64, "split": (3200, 400, 400), "epochs": 20},
         "cpu": {"width": 16, "layers": 1, "batch": 16, "split": (96, 32, 32), "epochs": 2}}


def default_data() -> Path:
    """../shared/data beside the checkout, else shared/data inside it."""
    outside = ROOT.parent / "shared" / "data"
    return outside if outside.exists() else ROOT / "shared" / "data"


def model_of(size: dict) -> ModelSettings:
    """The model of one size: its width, and its depth in ALIGNN and GCN layers alike."""
    return ModelSettings(hidden_features=size["width"], alignn_layers=size["layers"], gcn_layers=size["layers"])


def throughput(data: Path, device: torch.device, size: dict, repeats: int, compiled: bool = False) -> dict:
    """Crystals/s on the first `batch` crystals of the tiny file: reference and fused paths, or the compiled one.

    The fused path's peak GPU memory is recorded; the compiled path (its one-off compile in the warm-up
    step) runs last, so a missing compiler backend or a slow compile costs nothing else.
    """
    batch = parity.real_batch(size["batch"], data / "jarvis_dft3d_2021_tiny.jsonl").to(device)
    model = model_of(size)
    if compiled:
        seconds = btt.median_seconds({"compiled": parity.new_pair(batch, model, True)[0]}, batch, repeats)
        return {"crystals_per_s": {"compiled": batch.num_graphs / seconds["compiled"]}}
    new, ref = parity.new_pair(batch, model)
    seconds = btt.median_seconds({"reference": ref}, batch, repeats)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds |= btt.median_seconds({"fused": new}, batch, repeats)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"crystals_per_s": {k: batch.num_graphs / v for k, v in seconds.items()}, "peak_gib_fused": peak,
            "atoms": batch.num_nodes, "bonds": int(batch.edge_index.shape[1]), "sizes": asdict(model)}


def _graph(record: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from crys_pipeline.graphs import knn_graph

    graph = knn_graph(record["lattice_mat"], record["frac_coords"])
    z = np.array([parity.Z_OF[s] for s in record["species"]], dtype=np.int64)
    return z, graph.edge_index.astype(np.int64), graph.edge_vec.astype(np.float32)


def training_data(data: Path, counts: tuple[int, int, int]):
    """TrainingData of the first n crystals of each official formation-energy split, in memory."""
    from crys_pipeline.train.data import SplitData, TrainingData

    with gzip.open(data / "jarvis_dft3d_2021_targets_splits.csv.gz", "rt") as fh:
        rows = {r["jid"]: r for r in csv.DictReader(fh) if r[TARGET] and r[f"split_{TARGET}"] in SPLIT_NAMES}
    want = dict(zip(SPLIT_NAMES, counts, strict=True))
    picked: dict[str, list[dict]] = {name: [] for name in want}
    with gzip.open(data / "jarvis_dft3d_2021_structures.jsonl.gz", "rt") as fh:
        for line in fh:
            rec = json.loads(line)
            row = rows.get(rec["jid"])
            if row and len(picked[row[f"split_{TARGET}"]]) < want[row[f"split_{TARGET}"]]:
                picked[row[f"split_{TARGET}"]].append(rec | {"y": float(row[TARGET])})
    with ProcessPoolExecutor(16) as pool:
        splits = {name: SplitData(ids=[r["jid"] for r in recs], y=np.array([r["y"] for r in recs]),
                                  graphs=list(pool.map(_graph, recs, chunksize=32)), text=None)
                  for name, recs in picked.items()}
    return TrainingData(splits=splits, dropped=[], source="jarvis_dft_3d_2021",
                        split_meta={"regime": "full", "hash": "gpu_check", "method": "official", "target": TARGET})


def short_training(tdata, device: torch.device, size: dict, out: Path) -> dict:
    """Fit the graph-only ALIGNN (new code) for a few epochs; val-selected val/test MAE beside the constant
    baseline's (the training median) and s/epoch."""
    from crys_pipeline import evidence, train

    cfg = train.TrainConfig(target=TARGET, variant="alignn", seed=0, epochs=size["epochs"], batch_size=size["batch"],
                            model=model_of(size), device=device.type, test_each_epoch=False,
                            target_scaling="standardize")
    out.mkdir(parents=True, exist_ok=True)
    session, state = train.fit(tdata, cfg, out, device)
    preds = {name: train.predict_loader(session.model, loader, device)
             for name, loader in (("val", session.loaders.val), ("test", session.loaders.test))}
    (out / train.CHECKPOINT).unlink(missing_ok=True)
    return {"n": {k: len(v.ids) for k, v in tdata.splits.items()}, "epochs": state.epoch,
            "best_epoch": state.best_epoch,
            "seconds_per_epoch": round(state.wall_seconds / max(state.epoch, 1), 2),
            "val_mae": train.mae(*preds["val"][1:]), "test_mae": train.mae(*preds["test"][1:]),
            "baseline_test_mae": train.mae(preds["test"][1], np.full_like(preds["test"][1], evidence.constant_baseline(
                tdata.splits["train"].y)))}


def main() -> None:
    """Run both checks, print them and write gpu_check.json under --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=default_data())
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = SIZES[device.type]
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU fallback (tiny sizes)"
    print(f"device: {name}; torch {torch.__version__}; sizes {size}", flush=True)
    result = {"device": name, "torch": torch.__version__, "sizes": size}
    start = time.perf_counter()
    tdata = training_data(args.data, size["split"])  # worker processes before CUDA is initialised
    result["graph_seconds"] = round(time.perf_counter() - start, 1)
    save = (args.out / "gpu_check.json").write_text
    result["throughput"] = tp = throughput(args.data, device, size, args.repeats)
    rates = tp["crystals_per_s"]
    peak = tp["peak_gib_fused"]
    print(f"crystals/s at width {size['width']}: reference {rates['reference']:.0f}, fused {rates['fused']:.0f} "
          f"({rates['fused'] / rates['reference']:.2f}x); peak memory of the fused path "
          f"{'n/a' if peak is None else f'{peak:.2f} GiB'}", flush=True)
    save(json.dumps(result, indent=2, default=float))
    result["training"] = tr = short_training(tdata, device, size, args.out / "train")
    print(f"training {tr['n']}: {tr['epochs']} epochs, {tr['seconds_per_epoch']} s/epoch, val-selected "
          f"(epoch {tr['best_epoch']}) val MAE {tr['val_mae']:.4f}, test MAE {tr['test_mae']:.4f} eV/atom against "
          f"{tr['baseline_test_mae']:.4f} for the constant baseline (training median)", flush=True)
    if device.type == "cuda":
        result["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    save(json.dumps(result, indent=2, default=float))
    try:
        compiled = throughput(args.data, device, size, args.repeats, compiled=True)
        rates["compiled"] = compiled["crystals_per_s"]["compiled"]
        print(f"crystals/s at width {size['width']}, compiled (train.compile): {rates['compiled']:.0f} "
              f"({rates['compiled'] / rates['reference']:.2f}x the reference)", flush=True)
    except Exception as exc:  # a missing compiler backend must not lose the results above
        print(f"compiled path unavailable: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
    save(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()
