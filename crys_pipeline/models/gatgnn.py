"""GATGNN crystal encoder on the shared k-NN graph (Louis, Zhao, Hu, Dong, Hu & Song, PCCP 2020).

Paper defaults (GATGNN's released ``train.py``): CGCNN 92-dim atom descriptors and CGCNN's Gaussian
bond basis (41 centres, 0-8 Angstrom, step 0.2) on a graph of up to 12 neighbours within 8 Angstrom,
each embedded to 64; three graph-attention layers of 4 heads (head outputs averaged), each followed
by BatchNorm and softplus; the composition-based global attention (GI-M1) weighting the atoms;
per-crystal sum of the weighted atoms; two extra Linear(64, 64)-softplus layers. The encoder output
is that 64-wide crystal vector; the graph-only variant adds GATGNN's own output layer Linear(64, 1).

This project's choices (the CrysMMNet paper gives no GATGNN settings), also in ``settings()``:

- graph: our ALIGNN k-NN graph (cutoff 8, 12 neighbours, whole shells) for GATGNN's 12-neighbour list;
- composition vector: the fraction of the crystal's atoms of each element Z = 1..103;
- the released layer's unused PReLU and unused composition embedding are left out (no parameters).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch_geometric.utils import scatter, softmax

from crys_pipeline.models.layers import AtomFeatures, RBFExpansion

#: Elements of the composition vector (Z = 1..103).
N_ELEMENTS = 103
#: Negative slope of GATGNN's leaky ReLU on the embedded bonds.
NEG_SLOPE = 0.2


class GATGNNConv(nn.Module):
    r"""GATGNN's graph-attention layer (``GAT_Crystal``) over directed edges s -> t.

    .. math::
        x^t_{st} &= \mathrm{softplus}([h_t ; e_{st}] W), \quad x^s_{st} = \mathrm{softplus}([h_s ; e_{st}] W)
            \quad (\text{per head } k: [E, K, F]) \\
        \alpha_{st,k} &= \mathrm{softplus}(\mathrm{BN}(\mathrm{softplus}(a_k \cdot [x^t_{st,k} ; x^s_{st,k}]))) \\
        \hat\alpha_{st,k} &= \mathrm{softmax}_{s \to t}(\alpha_{st,k}), \quad
        h'_t = \frac{1}{K} \sum_k \sum_{s \to t} \hat\alpha_{st,k}\, x^s_{st,k} + b

    An atom without in-edges gets h'_t = b.

    Args:
        features: node, bond and output width F (64).
        heads: attention heads K (4).

    Shapes:
        h: [N, F]; e: [E, F]; edge_index: [2, E] (row 0 = source). output: [N, F].
    """

    def __init__(self, features: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.features, self.heads = features, heads
        self.weight = nn.Parameter(torch.empty(2 * features, heads * features))
        self.att = nn.Parameter(torch.empty(heads, 2 * features))
        self.bias = nn.Parameter(torch.zeros(features))
        self.bn = nn.BatchNorm1d(heads)
        nn.init.xavier_uniform_(self.weight)
        nn.init.xavier_uniform_(self.att)

    def forward(self, h: torch.Tensor, e: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """One attention-weighted aggregation onto the receiving atoms."""
        src, dst = edge_index[0], edge_index[1]
        shape = (-1, self.heads, self.features)
        x_t = F.softplus(torch.cat([h[dst], e], dim=1) @ self.weight).view(shape)  # [E, K F] -> [E, K, F]
        x_s = F.softplus(torch.cat([h[src], e], dim=1) @ self.weight).view(shape)  # [E, K F] -> [E, K, F]
        alpha = F.softplus((torch.cat([x_t, x_s], dim=2) * self.att).sum(dim=2))  # [E, K, 2F] -> [E, K]
        alpha = softmax(F.softplus(self.bn(alpha)), dst, num_nodes=h.shape[0])  # [E, K], sums to 1 per (t, k)
        out = scatter(x_s * alpha.unsqueeze(2), dst, dim=0, dim_size=h.shape[0], reduce="sum")  # [N, K, F]
        return out.mean(dim=1) + self.bias


class CompositionAttention(nn.Module):
    r"""GATGNN's composition-based global attention (GI-M1): one weight per atom, summing to 1 per crystal.

    .. math::
        w_t = \mathrm{softmax}_{t \in g}\big(\mathrm{Lin}_{32 \to 1}(\mathrm{softplus}(\mathrm{Lin}_{F + 103 \to 32}
            ([h_t ; c_{g(t)}])))\big)

    Args:
        features: atom width F (64).
        hidden: hidden width (32).

    Shapes:
        h: [N, F]; composition: [B, 103]; node_graph: [N]. output: [N, 1].
    """

    def __init__(self, features: int = 64, hidden: int = 32) -> None:
        super().__init__()
        self.node_layer = nn.Linear(features + N_ELEMENTS, hidden)
        self.atten_layer = nn.Linear(hidden, 1)

    def forward(self, h: torch.Tensor, composition: torch.Tensor, node_graph: torch.Tensor) -> torch.Tensor:
        """Attention weight of every atom within its crystal."""
        scores = self.atten_layer(F.softplus(self.node_layer(torch.cat([h, composition[node_graph]], dim=1))))
        return softmax(scores, node_graph)  # [N, 1]


def composition_fractions(z: torch.Tensor, node_graph: torch.Tensor, num_graphs: int) -> torch.Tensor:
    """Fraction of each crystal's atoms that are element Z, for Z = 1..103: float [B, 103]."""
    one_hot = F.one_hot(z - 1, N_ELEMENTS).to(torch.float32)  # [N, 103]
    return scatter(one_hot, node_graph, dim=0, dim_size=num_graphs, reduce="mean")


class GATGNNEncoder(nn.Module):
    """GATGNN encoder to GATGNN's 64-wide crystal vector.

    h0 = Lin(92 -> F)(cgcnn[z]); e = leaky_relu(Lin(41 -> F)(Gauss(d)), 0.2); ``layers`` times
    h <- softplus(BN(GATGNNConv(h, e))); y = sum_{t in g} w_t h_t with w = CompositionAttention;
    out = softplus(Lin(F -> F)(softplus(Lin(F -> F)(y)))).

    Args:
        atom_table: float [104, 92] CGCNN table (a buffer) or None (zeros, filled by a state_dict).
        features: F (64).
        layers: graph-attention layers (3).
        heads: attention heads per layer (4).
        radius: last Gaussian centre in Angstrom (8.0).
        step: Gaussian spacing and width in Angstrom (0.2).

    Shapes:
        batch.z: [N]; batch.edge_index: [2, E]; batch.edge_vec: [E, 3]; batch.batch: [N].
        output: [B, F].
    """

    def __init__(
        self,
        atom_table: torch.Tensor | None,
        features: int = 64,
        layers: int = 3,
        heads: int = 4,
        radius: float = 8.0,
        step: float = 0.2,
    ) -> None:
        super().__init__()
        bins = round(radius / step) + 1
        self._settings = {"features": features, "layers": layers, "heads": heads, "radius": radius, "step": step}
        self.out_features = features
        self.atom_features = AtomFeatures(atom_table)
        self.distance_expansion = RBFExpansion(0.0, radius, bins, gamma=1.0 / step**2)
        self.embed_n = nn.Linear(self.atom_features.out_features, features)
        self.embed_e = nn.Linear(bins, features)
        self.node_att = nn.ModuleList(GATGNNConv(features, heads) for _ in range(layers))
        self.batch_norm = nn.ModuleList(nn.BatchNorm1d(features) for _ in range(layers))
        self.comp_atten = CompositionAttention(features)
        self.linear1 = nn.Linear(features, features)
        self.linear2 = nn.Linear(features, features)

    def settings(self) -> dict[str, Any]:
        """Hyper-parameters and this project's choices, for model.json."""
        return {
            "encoder": "gatgnn",
            "hyperparameters": {**self._settings, "global_attention": "composition", "head_merge": "mean",
                                "readout": "attention-weighted sum", "xtra_layers": True, "dropout": 0.0},
            "project_choices": {
                "graph": "the ALIGNN k-NN graph (cutoff 8 A, 12 neighbours, whole shells)",
                "composition": "fraction of the crystal's atoms of each element Z = 1..103",
            },
        }

    def forward(self, batch) -> torch.Tensor:
        """Encode a torch_geometric Batch into crystal vectors [B, F]."""
        node_graph, n_graphs = batch.batch, batch.num_graphs
        h = self.embed_n(self.atom_features(batch.z))
        bonds = self.distance_expansion(torch.linalg.vector_norm(batch.edge_vec, dim=1))
        e = F.leaky_relu(self.embed_e(bonds), NEG_SLOPE)
        for conv, norm in zip(self.node_att, self.batch_norm, strict=True):
            h = F.softplus(norm(conv(h, e, batch.edge_index)))
        composition = composition_fractions(batch.z, node_graph, n_graphs).to(h.dtype)  # [B, 103]
        weights = self.comp_atten(h, composition, node_graph)  # [N, 1]
        y = scatter(h * weights, node_graph, dim=0, dim_size=n_graphs, reduce="sum")  # [N, F] -> [B, F]
        return F.softplus(self.linear2(F.softplus(self.linear1(y))))
