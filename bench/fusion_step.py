"""Cost of the fusion variants beyond [CLS] (docs/method.md §11.3): parameters and training-step time vs crysmmnet.

One AdamW step (forward + backward + update) of alignn, crysmmnet, crysmmnet_film and crysmmnet_xattn on the
same batch of real JARVIS k-NN graphs (crys_pipeline.graphs), variants interleaved in every round, median over
rounds, at two sizes: `offline`, the offline default (width 32, 2 + 2 layers, MiniLM's 384-wide text, batch 32), and
`paper` (width 256, 4 + 4 layers, MatSciBERT's 768, batch 64). The text inputs are random: a [CLS] vector and
`--tokens` token states per crystal (295 = the mean number of tokens of the offline default's full texts,
docs/method.md §11.1). Each step's process CPU time and wall time are recorded; on a shared machine the CPU
time's ratios are the ones to read.

Usage: .venv/bin/python bench/fusion_step.py [--repeats 5] [--threads 1] [--tokens 295] [--size offline|paper]
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
from crys_pipeline.settings import ModelSettings
from crys_pipeline.train.optim import param_groups

TINY = Path(__file__).resolve().parents[2] / "shared" / "data" / "jarvis_dft3d_2021_tiny.jsonl"
REFERENCE = "crysmmnet"
VARIANTS = ("alignn", "crysmmnet", "crysmmnet_film", "crysmmnet_xattn")
#: (label, batch size, text width, model settings)
SIZES = (
    ("offline", 32, 384, ModelSettings(hidden_features=32, alignn_layers=2, gcn_layers=2)),
    ("paper", 64, 768, ModelSettings(hidden_features=256, alignn_layers=4, gcn_layers=4)),
)


def real_batch(n: int, text_dim: int, n_tokens: int) -> Batch:
    """The first `n` JARVIS tiny structures as one batch with random [CLS] vectors and `n_tokens` token states."""
    from pymatgen.core import Element

    gen = torch.Generator().manual_seed(0)
    items = []
    for line in TINY.read_text().splitlines()[:n]:
        rec = json.loads(line)
        graph = knn_graph(rec["lattice_mat"], rec["frac_coords"])
        items.append(Data(z=torch.tensor([Element(s).Z for s in rec["species"]]),
                          edge_index=torch.from_numpy(graph.edge_index), edge_vec=torch.from_numpy(graph.edge_vec),
                          num_nodes=len(rec["species"]), text_emb=torch.randn(1, text_dim, generator=gen),
                          tokens=torch.randn(n_tokens, text_dim, generator=gen).half(),
                          n_tokens=torch.tensor([n_tokens])))
    return Batch.from_data_list(items)


def make_step(variant: str, batch: Batch, settings: ModelSettings, text_dim: int) -> tuple[Callable[[], None], int]:
    """(one AdamW step of a fresh model, its trainable parameter count)."""
    torch.manual_seed(0)
    table = torch.from_numpy(cgcnn_feature_table())
    model = build_model(variant, settings, atom_table=table, text_dim=text_dim).train()
    optimizer = torch.optim.AdamW(param_groups(model, 1e-5), lr=1e-3)
    target = torch.zeros(batch.num_graphs)

    def step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(batch), target).backward()
        optimizer.step()

    return step, sum(p.numel() for p in model.parameters() if p.requires_grad)


def measure(batch: Batch, settings: ModelSettings, text_dim: int,
            repeats: int) -> dict[str, tuple[int, float, float]]:
    """{variant: (parameters, median CPU ms per step, median wall ms per step)}, variants interleaved.

    The process's CPU time is the ratio to read on a loaded machine: other jobs stretch the wall time of a step
    (by 10x on this 2-core machine at a load of 7), not the work it does.
    """
    steps = {v: make_step(v, batch, settings, text_dim) for v in VARIANTS}
    cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
    wall: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for round_ in range(repeats + 1):
        for variant, (step, _) in steps.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            step()
            if round_:  # the first round warms up
                cpu[variant].append(1e3 * (time.process_time() - start_cpu))
                wall[variant].append(1e3 * (time.perf_counter() - start))
    return {v: (steps[v][1], statistics.median(cpu[v]), statistics.median(wall[v])) for v in VARIANTS}


def main() -> None:
    """Measure and print one table per size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the train rule runs 1 per job)")
    parser.add_argument("--tokens", type=int, default=295, help="token states per crystal")
    parser.add_argument("--size", choices=[label for label, *_ in SIZES], action="append",
                        help="measure this size only (repeatable; default both)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for label, n, text_dim, settings in SIZES:
        if args.size and label not in args.size:
            continue
        batch = real_batch(n, text_dim, args.tokens)
        results = measure(batch, settings, text_dim, args.repeats)
        print(f"{label}: {batch.num_graphs} crystals, {batch.num_nodes} atoms, {batch.edge_index.shape[1]} edges, "
              f"{args.tokens} tokens each; width {settings.hidden_features}, {settings.alignn_layers} + "
              f"{settings.gcn_layers} layers, text {text_dim}; torch threads {args.threads}")
        params_ref, cpu_ref, wall_ref = results[REFERENCE]
        for variant, (params, cpu, wall) in results.items():
            print(f"  {variant:16s} {params:>10,d} parameters ({params / params_ref:.3f}x)  CPU {cpu:9.1f} ms/step "
                  f"({cpu / cpu_ref:.3f}x {REFERENCE})  wall {wall:9.1f} ms ({wall / wall_ref:.3f}x)")


if __name__ == "__main__":
    main()
