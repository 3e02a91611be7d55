"""The training step as it was before the fused kernels: the parity reference (test and bench helper).

The unfused edge-gated convolution, the per-batch line graph and the encoder forward of
crys_pipeline/models/{alignn,line_graph}.py before the fused kernels (verbatim), the helpers that run a
fused model through them with the same weights, and the real batch both are compared on: the first
crystals of ../shared/data/jarvis_dft3d_2021_tiny.jsonl, k-NN graphs built by `crys_pipeline.graphs.knn_graph`,
their formation energies as targets and a fixed seeded random text vector per crystal.

tests/test_fused.py and tests/test_optim.py compare against it; bench/bench_train_throughput.py and
bench/gpu_check.py time it (they put this folder on sys.path, as bench/bench_graphs.py does for
graph_reference.py). Nothing here imports pymatgen (the GPU machine has none).
"""

from __future__ import annotations

import copy
import json
import types
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch_geometric.data import Batch, Data
from torch_geometric.utils import scatter

from crys_pipeline.models import build_model
from crys_pipeline.models.alignn import NODE_BLOCKS, EdgeGatedGraphConv
from crys_pipeline.models.layers import readout
from crys_pipeline.settings import ModelSettings
from crys_pipeline.train.optim import param_groups

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT.parent / "shared" / "data" / "jarvis_dft3d_2021_tiny.jsonl"
TEXT_DIM = 384
#: The model of the numerical checks: width 16 at the paper's depth (4 ALIGNN + 4 GCN layers).
WIDTH_16 = ModelSettings(hidden_features=16)


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


def new_pair(batch: Batch, settings: ModelSettings, compiled: bool = False,
             ) -> tuple[tuple[nn.Module, torch.optim.Optimizer], tuple]:
    """((fused model, fused AdamW), (reference model, reference AdamW)) from one seed, same weights.

    ``compiled`` switches the fused model to the ``torch.compile`` kernels (``train.compile``).
    """
    from crys_pipeline.atom_features import cgcnn_feature_table
    from crys_pipeline.models.fused import use_compiled
    from crys_pipeline.train import make_optimizer

    torch.manual_seed(0)
    model = build_model("crysmmnet", settings, atom_table=torch.from_numpy(cgcnn_feature_table()), text_dim=TEXT_DIM)
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
    (model, _), (ref, _) = new_pair(batch, WIDTH_16, compiled)
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
