"""Training-step cost of every model variant on real JARVIS crystals, as ratios to ALIGNN.

docs/method.md §10.1: with cached [CLS] embeddings CrysMMNet should cost about what ALIGNN costs (the
reference CrysMMNet re-ran MatSciBERT on every batch). This measures one AdamW step (forward + backward + update)
on the same batch of real k-NN graphs (crys_pipeline.graphs) for each variant, and the per-batch line
graph construction, all in one run (variants interleaved), and prints ms/step and the ratio to the ALIGNN variant.

Usage: .venv/bin/python bench/models_step.py [--batch 64] [--repeats 5] [--threads 2] [--hidden 256]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch_geometric.data import Batch, Data

from crys_pipeline.atom_features import cgcnn_feature_table
from crys_pipeline.graphs import knn_graph
from crys_pipeline.models import build_model
from crys_pipeline.models.line_graph import line_graph
from crys_pipeline.settings import ModelSettings, TrainSettings
from crys_pipeline.train.optim import param_groups
from crys_pipeline.variants import VARIANTS as ALL_VARIANTS

TINY = Path(__file__).resolve().parents[2] / "shared" / "data" / "jarvis_dft3d_2021_tiny.jsonl"
REFERENCE = "alignn"
#: Every variant except the text-view ablations (same model as crysmmnet, another cached text) and the fusion
#: variants of docs/method.md §11 (bench/fusion_step.py measures those, with token states).
VARIANTS = tuple(name for name, v in ALL_VARIANTS.items() if v.text_view in (None, "full") and v.fusion == "concat")


def real_batch(n: int) -> Batch:
    """The first ``n`` JARVIS tiny structures as one batch of ALIGNN k-NN graphs with random text vectors."""
    from pymatgen.core import Element

    gen = torch.Generator().manual_seed(0)
    items = []
    for line in TINY.read_text().splitlines()[:n]:
        rec = json.loads(line)
        graph = knn_graph(rec["lattice_mat"], rec["frac_coords"])
        items.append(
            Data(
                z=torch.tensor([Element(s).Z for s in rec["species"]]),
                edge_index=torch.from_numpy(graph.edge_index),
                edge_vec=torch.from_numpy(graph.edge_vec),
                num_nodes=len(rec["species"]),
                text_emb=torch.randn(1, 768, generator=gen),
            )
        )
    return Batch.from_data_list(items)


def make_step(variant: str, batch: Batch, hidden: int) -> Callable[[], None]:
    """One AdamW training step (zero_grad, MSE forward, backward, update) of a fresh model."""
    torch.manual_seed(0)
    table = torch.from_numpy(cgcnn_feature_table())
    model = build_model(variant, ModelSettings(hidden_features=hidden), atom_table=table)
    recipe = TrainSettings()
    optimizer = torch.optim.AdamW(param_groups(model.train(), recipe.weight_decay), lr=recipe.learning_rate)
    target = torch.zeros(batch.num_graphs)

    def step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(batch), target).backward()
        optimizer.step()

    return step


def median_ms(batch: Batch, repeats: int, hidden: int) -> dict[str, float]:
    """Median step time per variant; variants are interleaved in every round so machine load hits all alike."""
    steps = {v: make_step(v, batch, hidden) for v in VARIANTS}
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for round_ in range(repeats + 1):
        for variant, step in steps.items():
            start = time.perf_counter()
            step()
            if round_:
                times[variant].append(1e3 * (time.perf_counter() - start))
    return {v: statistics.median(t) for v, t in times.items()}


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batch = real_batch(args.batch)
    start = time.perf_counter()
    lg_index, _ = line_graph(batch.edge_index, batch.edge_vec)
    lg_ms = 1e3 * (time.perf_counter() - start)
    print(
        f"batch: {batch.num_graphs} crystals, {batch.num_nodes} atoms, {batch.edge_index.shape[1]} edges, "
        f"{lg_index.shape[1]} triplets; line graph {lg_ms:.1f} ms; torch threads {args.threads}"
    )
    results = median_ms(batch, args.repeats, args.hidden)
    for variant, ms in results.items():
        print(f"{variant:16s} {ms:9.1f} ms/step   ratio to {REFERENCE}: {ms / results[REFERENCE]:.3f}")


if __name__ == "__main__":
    main()
