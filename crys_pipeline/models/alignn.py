"""ALIGNN graph encoder on PyTorch + torch_geometric (SPEC.md 4.1-4.4).

Edge-gated graph convolution (EGGC), the ALIGNN layer (crystal-graph EGGC, then line-graph EGGC)
and the encoder that embeds atoms, bonds and bond angles, runs 4 ALIGNN + 4 EGGC layers and
mean-pools per crystal. The line graph is built per batch inside ``forward``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch_geometric.utils import scatter

from crys_pipeline.models.layers import AtomFeatures, MLPLayer, RBFExpansion, readout
from crys_pipeline.models.line_graph import line_graph

#: Denominator guard of the normalised gated aggregation (SPEC.md 4.2 step 3).
GATE_EPS = 1e-6


class EdgeGatedGraphConv(nn.Module):
    r"""Edge-gated graph convolution EGGC(G; h, e) over directed edges s -> t (SPEC.md 4.2).

    .. math::
        g_{st} &= A h_s + B h_t + C e_{st} \\
        a_t &= \frac{\sum_{s \to t} \sigma(g_{st}) \odot V h_s}{\sum_{s \to t} \sigma(g_{st}) + 10^{-6}} \\
        h'_t &= h_t + \mathrm{SiLU}(\mathrm{BN_{node}}(U h_t + a_t)) \\
        e'_{st} &= e_{st} + \mathrm{SiLU}(\mathrm{BN_{edge}}(g_{st}))

    A = ``src_gate``, B = ``dst_gate``, C = ``edge_gate``, U = ``src_update`` (applied to the
    receiving node itself, as in the released code), V = ``dst_update`` (applied to the sending
    neighbour). Five Linear(H, H) layers with bias, as in CrysMMNet/ALIGNN ``EdgeGatedGraphConv``.
    Aggregation is a scatter-sum onto ``edge_index[1]``; nodes without in-edges get a_t = 0.
    The edge output is built from the raw gate logits g (the code, not the paper's Eq. 3/4).

    Args:
        features: H, the node and edge width (input = output).

    Shapes:
        h: [N, H] node features; e: [E, H] edge features; edge_index: [2, E] (row 0 = source s).
        output: (h' [N, H], e' [E, H]).
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
        node = self.src_update(h) + num / (den + GATE_EPS)
        return h + F.silu(self.bn_nodes(node)), e + F.silu(self.bn_edges(gate))


class ALIGNNLayer(nn.Module):
    """ALIGNN layer (SPEC.md 4.3): crystal-graph EGGC, whose bond output feeds the line-graph EGGC.

    (h, m) <- EGGC_G(h, e); (e, t) <- EGGC_L(G)(m, t). Submodule names follow the reference
    (``node_update``, ``edge_update``).

    Args:
        features: H.

    Shapes:
        h: [N, H]; e: [E, H]; t: [T, H]; edge_index: [2, E]; lg_index: [2, T] (indices into edges).
        output: (h' [N, H], e' [E, H], t' [T, H]).
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.node_update = EdgeGatedGraphConv(features)
        self.edge_update = EdgeGatedGraphConv(features)

    def forward(
        self,
        h: torch.Tensor,
        e: torch.Tensor,
        t: torch.Tensor,
        edge_index: torch.Tensor,
        lg_index: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Crystal-graph update, then line-graph update."""
        h, m = self.node_update(h, e, edge_index)
        e, t = self.edge_update(m, t, lg_index)
        return h, e, t


class ALIGNNEncoder(nn.Module):
    """ALIGNN crystal encoder to a pooled per-crystal vector (SPEC.md 4.1-4.5).

    h0 = MLPL(92 -> H)(cgcnn[z]); e0 = MLPL(64 -> H)(MLPL(80 -> 64)(RBF_80[0, 8](|r|)));
    t0 = MLPL(64 -> H)(MLPL(40 -> 64)(RBF_40[-1, 1](cos))); then ``alignn_layers`` ALIGNN layers
    and ``gcn_layers`` EGGC layers; readout = per-crystal mean (or sum) of h.

    Args:
        atom_table: float [104, 92] CGCNN table (a buffer) or None (zeros, filled by a state_dict).
        hidden_features: H (256).
        alignn_layers: number of ALIGNN layers (4).
        gcn_layers: number of crystal-graph EGGC layers after them (4).
        embedding_features: width between the two bond/angle MLPL blocks (64).
        edge_bins: RBF centres for distances (80).
        triplet_bins: RBF centres for bond-angle cosines (40).
        readout: "mean" (reference) or "sum".

    Shapes:
        batch.z: [N]; batch.edge_index: [2, E]; batch.edge_vec: [E, 3]; batch.batch: [N].
        output: [B, H].
    """

    def __init__(
        self,
        atom_table: torch.Tensor | None,
        hidden_features: int = 256,
        alignn_layers: int = 4,
        gcn_layers: int = 4,
        embedding_features: int = 64,
        edge_bins: int = 80,
        triplet_bins: int = 40,
        readout: str = "mean",
    ) -> None:
        super().__init__()
        self.out_features = hidden_features
        self.reduce = readout
        self.atom_features = AtomFeatures(atom_table)
        self.atom_embedding = MLPLayer(self.atom_features.out_features, hidden_features)
        self.edge_embedding = nn.Sequential(
            RBFExpansion(0.0, 8.0, edge_bins),
            MLPLayer(edge_bins, embedding_features),
            MLPLayer(embedding_features, hidden_features),
        )
        self.angle_embedding = nn.Sequential(
            RBFExpansion(-1.0, 1.0, triplet_bins),
            MLPLayer(triplet_bins, embedding_features),
            MLPLayer(embedding_features, hidden_features),
        )
        self.alignn_layers = nn.ModuleList(ALIGNNLayer(hidden_features) for _ in range(alignn_layers))
        self.gcn_layers = nn.ModuleList(EdgeGatedGraphConv(hidden_features) for _ in range(gcn_layers))

    def forward(self, batch) -> torch.Tensor:
        """Encode a torch_geometric Batch into pooled crystal vectors [B, H]."""
        edge_index, edge_vec = batch.edge_index, batch.edge_vec
        h = self.atom_embedding(self.atom_features(batch.z))
        e = self.edge_embedding(torch.linalg.vector_norm(edge_vec, dim=1))
        if len(self.alignn_layers) > 0:
            lg_index, cos = line_graph(edge_index, edge_vec)
            t = self.angle_embedding(cos)
            for layer in self.alignn_layers:
                h, e, t = layer(h, e, t, edge_index, lg_index)
        for layer in self.gcn_layers:
            h, e = layer(h, e, edge_index)
        return readout(h, batch.batch, batch.num_graphs, self.reduce)
