"""Training-step throughput: the reference EGGC model and optimizer against the fused ones, same batch.

Batch: the first 64 crystals of ../shared/data/jarvis_dft3d_2021_tiny.jsonl, k-NN graphs built by
`crys_pipeline.graphs.knn_graph`, their formation energies as targets and a fixed seeded random
text vector per crystal (the text path is three Linear layers; it does not change the comparison).
Both models are built from the same seed: the new model by `crys_pipeline.models.build_model`, the
reference by swapping every EGGC for the REFERENCE CODE below (the layer, line graph and encoder
forward as they were before the fused kernels, copied verbatim) with the same weights.

- Reference: that model + `torch.optim.AdamW(param_groups(model))` (PyTorch's default implementation).
- Fused: the fused model + `crys_pipeline.train.make_optimizer` (fused AdamW on one flat buffer per
  parameter group, `crys_pipeline.optim.FlatAdamW`), eager (train.compile false).
- Compiled: the same with the edge-gated convolutions through `torch.compile` (train.compile true);
  its one-off compile happens in the warm-up step and is not timed.

The process lets glibc keep freed memory (`crys_pipeline.devices.keep_cpu_memory`), as `crys-pipeline
train` does on a CPU: the comparison is of the model code, under the trainer's allocator settings, for
every path alike. One more comparison runs each path at the offline default in a fresh process of its
own, as its trainer runs it: the reference under glibc's defaults, the fused path with kept memory
(processes alternating, three each).

Measured, in one run: aten operations per step (forward, backward, optimizer; every aten event
torch.profiler records, nested ones included, and the top-level ones alone), ms per step on the CPU
at width 16 (paper depth 4 + 4) and at the offline default (config.yaml train.hidden_features,
alignn_layers, gcn_layers), crystals/s at paper width on CUDA when present, and whether loss and
gradients agree to float32 tolerance. Timed rounds alternate the two paths; medians are reported.

Last two lines: the op ratio of the fused eager path, then (last line) of the compiled path:
`train kernels: X.XXx fewer forward+backward ops (same loss: yes|no)`.

Usage: .venv/bin/python bench/bench_train_throughput.py [--threads 2] [--repeats 5] [--batch-file F]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch_geometric.data import Batch, Data
from torch_geometric.utils import scatter

from crys_pipeline.devices import keep_cpu_memory
from crys_pipeline.models import build_model, param_groups
from crys_pipeline.models.alignn import NODE_BLOCKS, EdgeGatedGraphConv
from crys_pipeline.models.layers import readout

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT.parent / "shared" / "data" / "jarvis_dft3d_2021_tiny.jsonl"
TEXT_DIM = 384
PAPER = {"hidden_features": 256, "alignn_layers": 4, "gcn_layers": 4}


# ==== REFERENCE CODE: crys_pipeline/models/{alignn,line_graph}.py before the fused kernels (verbatim) ====
class ReferenceEdgeGatedGraphConv(nn.Module):
    """The reference EGGC (docs/method.md §4.2): five Linear(H, H), three gathers, two scatters, two BatchNorms.

    Args:
        features: H.

    Shapes:
        h: [N, H]; e: [E, H]; edge_index: [2, E]. output: (h' [N, H], e' [E, H]).
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.src_gate = nn.Linear(features, features)
        self.dst_gate = nn.Linear(features, features)
        self.edge_gate = nn.Linear(features, features)
        self.bn_edges = nn.BatchNorm1d(features)
        self.src_update = nn.Linear(features, features)
        self.dst_update = nn.Linear(features, features)
        self.bn_nodes = nn.BatchNorm1d(features)

    def forward(
        self, h: torch.Tensor, e: torch.Tensor, edge_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One gated message-passing step; returns updated (node, edge) features."""
        src, dst = edge_index[0], edge_index[1]
        gate = self.src_gate(h)[src] + self.dst_gate(h)[dst] + self.edge_gate(e)  # [N, H] gathered -> [E, H]
        sigma = torch.sigmoid(gate)
        messages = sigma * self.dst_update(h)[src]  # [E, H]
        num = scatter(messages, dst, dim=0, dim_size=h.shape[0], reduce="sum")  # [E, H] -> [N, H]
        den = scatter(sigma, dst, dim=0, dim_size=h.shape[0], reduce="sum")  # [E, H] -> [N, H]
        node = self.src_update(h) + num / (den + 1e-6)
        return h + F.silu(self.bn_nodes(node)), e + F.silu(self.bn_edges(gate))


def reference_line_graph(edge_index: torch.Tensor, edge_vec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference per-batch line graph (CSR expansion, two host syncs)."""
    from crys_pipeline.models.line_graph import bond_cosines

    src, dst = edge_index[0], edge_index[1]
    device = edge_index.device
    num_edges = src.numel()
    num_nodes = int(torch.max(edge_index).item()) + 1 if num_edges else 0
    by_source = torch.argsort(src, stable=True)  # [E] edge ids grouped by source node
    out_degree = torch.bincount(src, minlength=num_nodes)  # [num_nodes]
    row_start = torch.cumsum(out_degree, 0) - out_degree  # [num_nodes] CSR row pointer
    n_succ = out_degree[dst]  # [E] successors of each edge = out-edges of its head
    total = int(n_succ.sum().item())
    first = torch.repeat_interleave(torch.arange(num_edges, device=device), n_succ, output_size=total)  # [T]
    group_start = torch.cumsum(n_succ, 0) - n_succ  # [E] first triplet of each edge A
    rank = torch.arange(total, device=device) - torch.repeat_interleave(group_start, n_succ, output_size=total)
    second = by_source[row_start[dst[first]] + rank]  # [T]
    return torch.stack([first, second]), bond_cosines(edge_vec[first], edge_vec[second])


def reference_encoder_forward(self, batch) -> torch.Tensor:
    """The reference ``ALIGNNEncoder.forward``: line graph per batch, edge_index passed to every layer."""
    edge_index, edge_vec = batch.edge_index, batch.edge_vec
    h = self.atom_embedding(self.atom_features(batch.z))
    e = self.edge_embedding(torch.linalg.vector_norm(edge_vec, dim=1))
    if len(self.alignn_layers) > 0:
        lg_index, cos = reference_line_graph(edge_index, edge_vec)
        t = self.angle_embedding(cos)
        for layer in self.alignn_layers:
            h, m = layer.node_update(h, e, edge_index)
            e, t = layer.edge_update(m, t, lg_index)
    for layer in self.gcn_layers:
        h, e = layer(h, e, edge_index)
    return readout(h, batch=batch.batch, num_graphs=batch.num_graphs, reduce=self.reduce)
# ==== END OF REFERENCE CODE ====


def to_reference(conv: EdgeGatedGraphConv) -> ReferenceEdgeGatedGraphConv:
    """The reference layer holding exactly the weights of a fused one."""
    ref = ReferenceEdgeGatedGraphConv(conv.node_linear.in_features)
    ref.load_state_dict({f"{name}.{kind}": part.detach().clone() for name in NODE_BLOCKS
                         for kind, part in zip(("weight", "bias"), conv.block(name), strict=True)}
                        | {k: v for k, v in conv.state_dict().items() if not k.startswith("node_linear")})
    return ref


def reference_model(model: nn.Module) -> nn.Module:
    """A deep copy of a fused model running the reference code with the same weights."""
    ref = copy.deepcopy(model)
    for _name, module in list(ref.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, EdgeGatedGraphConv):
                setattr(module, child_name, to_reference(child))
    ref.graph_encoder.forward = types.MethodType(reference_encoder_forward, ref.graph_encoder)
    return ref


def reference_grads(ref: nn.Module, model: nn.Module) -> dict[str, torch.Tensor]:
    """The reference's gradients in the fused model's parameter layout (node-side blocks concatenated)."""
    grads = {n: p.grad for n, p in ref.named_parameters()}
    out = {}
    for name, _ in model.named_parameters():
        prefix, found, kind = name.rpartition("node_linear.")
        if found:
            parts = [grads[f"{prefix}{block}.{kind}"] for block in NODE_BLOCKS]
            out[name] = None if parts[0] is None else torch.cat(parts)
        else:
            out[name] = grads[name]
    return out


_SYMBOLS = ("H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr "
           "Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb "
           "Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr")
#: Atomic number of an element symbol, without pymatgen (the GPU machine has none).
Z_OF = {symbol: z for z, symbol in enumerate(_SYMBOLS.split(), start=1)}


def crystal(record: dict, text: torch.Tensor, target: str = "formation_energy_peratom") -> Data:
    """One JARVIS record as a PyG item: k-NN graph by crys_pipeline.graphs, target, a text vector."""
    from crys_pipeline.graphs import knn_graph

    graph = knn_graph(record["lattice_mat"], record["frac_coords"])
    return Data(z=torch.tensor([Z_OF[s] for s in record["species"]]), edge_index=torch.from_numpy(graph.edge_index),
                edge_vec=torch.from_numpy(graph.edge_vec).float(), num_nodes=len(record["species"]),
                y=torch.tensor([record[target]], dtype=torch.float32), text_emb=text.view(1, -1))


def real_batch(n: int = 64, path: Path = TINY) -> Batch:
    """The first ``n`` crystals of ``path`` (JSON lines of JARVIS records) as one batch."""
    gen = torch.Generator().manual_seed(0)
    records = [json.loads(line) for line in path.read_text().splitlines()[:n]]
    return Batch.from_data_list([crystal(r, torch.randn(TEXT_DIM, generator=gen)) for r in records])


def new_pair(batch: Batch, compiled: bool = False, **sizes) -> tuple[tuple[nn.Module, torch.optim.Optimizer], tuple]:
    """((fused model, fused AdamW), (reference model, reference AdamW)) from one seed, same weights.

    ``compiled`` switches the fused model to the ``torch.compile`` kernels (``train.compile``).
    """
    from crys_pipeline.atom_features import cgcnn_feature_table
    from crys_pipeline.models.fused import use_compiled
    from crys_pipeline.train import make_optimizer

    torch.manual_seed(0)
    model = build_model("crysmmnet", atom_table=torch.from_numpy(cgcnn_feature_table()), text_dim=TEXT_DIM, **sizes)
    model = model.to(batch.z.device).train()
    ref = reference_model(model)
    use_compiled(model, compiled)
    return (model, make_optimizer(model, 1e-3, 1e-5)), (ref, torch.optim.AdamW(param_groups(ref, 1e-5), lr=1e-3))


def loss_of(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The trainer's loss: MSE of the predictions (bf16 autocast on CUDA, as in training)."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=batch.z.is_cuda):
        pred = model(batch)
    return F.mse_loss(pred.float(), batch.y)


def same_numbers(batch: Batch, compiled: bool = False) -> tuple[bool, str]:
    """Loss and every gradient of the fused (or compiled) and reference paths on one float32 step (width 16, 4 + 4)."""
    (model, _), (ref, _) = new_pair(batch, compiled, hidden_features=16, alignn_layers=4, gcn_layers=4)
    torch.manual_seed(1)  # the same dropout masks in both paths
    loss = loss_of(model, batch)
    torch.manual_seed(1)
    ref_loss = loss_of(ref, batch)
    loss.backward()
    ref_loss.backward()
    wanted = reference_grads(ref, model)
    scale = max(float(g.abs().max()) for g in wanted.values() if g is not None)
    worst = 0.0
    for name, param in model.named_parameters():
        want = wanted[name]
        if (param.grad is None) != (want is None):  # unused parameters: None, or exact zeros (compiled)
            if (want if param.grad is None else param.grad).abs().max() > 0:
                return False, f"{name}: gradient present in one path only"
        elif want is not None:
            worst = max(worst, float((param.grad - want).abs().max()) / scale)
    ok = bool(torch.isclose(loss, ref_loss, rtol=1e-5)) and worst < 1e-5
    return ok, (f"loss {loss.item():.7f} vs {ref_loss.item():.7f}; largest gradient difference {worst:.1e} "
                "of the largest gradient")


def count_ops(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch) -> dict[str, tuple[int, int]]:
    """(all aten events, top-level aten events) of forward, backward and optimizer step (after a warm-up)."""
    from torch.profiler import ProfilerActivity, profile

    def measure(fn: Callable[[], object]) -> tuple[tuple[int, int], object]:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            out = fn()
        events = [e for e in prof.events() if e.name.startswith("aten::")]
        top = [e for e in events if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
        return (len(events), len(top)), out

    step(model, optimizer, batch)
    optimizer.zero_grad(set_to_none=True)
    forward, loss = measure(lambda: loss_of(model, batch))
    backward, _ = measure(loss.backward)
    opt, _ = measure(optimizer.step)
    return {"forward": forward, "backward": backward, "optimizer": opt}


def step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch) -> None:
    """One training step as the trainer runs it."""
    loss = loss_of(model, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def median_seconds(pairs: dict[str, tuple], batch: Batch, repeats: int) -> dict[str, float]:
    """Median wall seconds per step of each (model, optimizer), interleaved round by round."""
    sync = torch.cuda.synchronize if batch.z.is_cuda else (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in pairs}
    for round_no in range(repeats + 1):
        for name, (model, optimizer) in pairs.items():
            sync()
            start = time.perf_counter()
            step(model, optimizer, batch)
            sync()
            if round_no:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def timed(batch: Batch, repeats: int, label: str, **sizes) -> dict[str, float]:
    """Print ms per step (crystals/s on CUDA) of the three paths at one size; returns reference / path."""
    new, ref = new_pair(batch, **sizes)
    compiled, _ = new_pair(batch, True, **sizes)
    sec = median_seconds({"reference": ref, "fused": new, "compiled": compiled}, batch, repeats)
    ratios = {k: sec["reference"] / v for k, v in sec.items() if k != "reference"}
    if batch.z.is_cuda:
        shown = ", ".join(f"{k} {batch.num_graphs / v:.0f} crystals/s" for k, v in sec.items())
    else:
        shown = ", ".join(f"{k} {1e3 * v:.1f} ms/step" for k, v in sec.items())
    print(f"{label}: {shown} (fused {ratios['fused']:.2f}x, compiled {ratios['compiled']:.2f}x)", flush=True)
    return ratios


def offline_default_sizes() -> dict[str, int]:
    """hidden_features, alignn_layers and gcn_layers of config.yaml's train block."""
    import yaml

    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())["train"]
    return {k: int(cfg[k]) for k in PAPER}


def one_path(path: str, batch_file: Path, repeats: int) -> dict[str, float]:
    """Median seconds per step of one path at the offline default in this process, under its trainer's allocator.

    The reference runs under glibc's defaults (the trainer before this work), the fused path after
    ``keep_cpu_memory`` (``crys-pipeline train`` on a CPU).
    """
    if path == "fused":
        keep_cpu_memory()
    batch = real_batch(64, batch_file)
    new, ref = new_pair(batch, **offline_default_sizes())
    return median_seconds({path: new if path == "fused" else ref}, batch, repeats)


def as_trainers_run(args: argparse.Namespace, rounds: int = 3) -> float:
    """Print ms per step of reference and fused at the offline default, each in a fresh process of its own
    (``one_path``), the processes alternating; returns reference / fused of the medians."""
    times: dict[str, list[float]] = {"reference": [], "fused": []}
    for _ in range(rounds):
        for path, seconds in times.items():
            child = subprocess.run([sys.executable, __file__, "--one-path", path, "--threads", str(args.threads),
                                    "--repeats", str(args.repeats), "--batch-file", str(args.batch_file)],
                                   capture_output=True, text=True, check=True)
            seconds.append(json.loads(child.stdout.strip().splitlines()[-1])[path])
    ref, fused = (statistics.median(times[k]) for k in ("reference", "fused"))
    print(f"CPU offline default, each path in its own process as its trainer runs it (reference: glibc defaults; "
          f"fused: keep_cpu_memory), {rounds} processes each: reference {1e3 * ref:.1f} ms/step, "
          f"fused {1e3 * fused:.1f} ms/step ({ref / fused:.2f}x)", flush=True)
    return ref / fused


def main() -> None:
    """Measure and print; the last line is the kernel-count ratio and the numerical check."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per path (after one warm-up)")
    parser.add_argument("--batch-file", type=Path, default=TINY, help="JSON lines of JARVIS records")
    parser.add_argument("--one-path", choices=("reference", "fused"), help=argparse.SUPPRESS)  # as_trainers_run
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one_path:
        print(json.dumps(one_path(args.one_path, args.batch_file, args.repeats)))
        return
    kept = keep_cpu_memory()  # as `crys-pipeline train` does on a CPU; applies to every path alike
    batch = real_batch(64, args.batch_file)
    print(f"batch: {batch.num_graphs} crystals, {batch.num_nodes} atoms, {batch.edge_index.shape[1]} bonds; "
          f"torch {torch.__version__}, {args.threads} threads, glibc keeps freed memory: {kept}")
    checks = {name: same_numbers(batch, name == "compiled") for name in ("fused", "compiled")}
    for name, (_, detail) in checks.items():
        print(f"numerics {name} vs reference (width 16, 4 + 4 layers, float32): {detail}", flush=True)
    ops = {}
    for name in ("fused", "compiled"):
        new, ref = new_pair(batch, name == "compiled", hidden_features=16, alignn_layers=4, gcn_layers=4)
        ops.setdefault("reference", count_ops(*ref, batch))
        ops[name] = count_ops(*new, batch)
    for name, parts in ops.items():
        print(f"aten ops per step, {name}: " + ", ".join(f"{k} {v[0]} ({v[1]} top-level)" for k, v in parts.items()))
    fb = {name: parts["forward"][0] + parts["backward"][0] for name, parts in ops.items()}
    top = {name: parts["forward"][1] + parts["backward"][1] for name, parts in ops.items()}
    for name in ("fused", "compiled"):
        print(f"forward+backward, {name}: {fb['reference']} -> {fb[name]} aten ops "
              f"({fb['reference'] / fb[name]:.2f}x), top-level {top['reference']} -> {top[name]} "
              f"({top['reference'] / top[name]:.2f}x)")
    timed(batch, args.repeats, "CPU width 16, 4 + 4 layers", hidden_features=16, alignn_layers=4, gcn_layers=4)
    sizes = offline_default_sizes()
    timed(batch, args.repeats, f"CPU offline default (width {sizes['hidden_features']}, "
          f"{sizes['alignn_layers']} + {sizes['gcn_layers']} layers)", **sizes)
    as_trainers_run(args)
    if torch.cuda.is_available():
        timed(batch.to("cuda"), args.repeats, f"CUDA {torch.cuda.get_device_name()} paper width", **PAPER)
    print(f"train kernels (fused, eager): {fb['reference'] / fb['fused']:.2f}x fewer forward+backward ops "
          f"(same loss: {'yes' if checks['fused'][0] else 'no'})")
    print(f"train kernels: {fb['reference'] / fb['compiled']:.2f}x fewer forward+backward ops "
          f"(same loss: {'yes' if checks['compiled'][0] else 'no'})")


if __name__ == "__main__":
    main()
