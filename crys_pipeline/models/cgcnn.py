"""CGCNN crystal encoder on the shared k-NN graph (docs/method.md §5.1; Xie & Grossman 2018).

Original CGCNN defaults: atom_fea_len 64, n_conv 3, h_fea_len 128 (n_h 1), Gaussian distance basis
0-8 Angstrom with step 0.2 (41 centres, exp(-(d - mu)^2 / step^2)), softplus, mean pooling. The
neighbour list is our ALIGNN k-NN graph (no line graph): the neighbours of atom t are the sources
of the edges s -> t. The encoder output is CGCNN's crystal vector after ``conv_to_fc`` + softplus.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch_geometric.utils import scatter

from crys_pipeline.models.layers import AtomFeatures, RBFExpansion, readout


class CGCNNConv(nn.Module):
    r"""CGCNN convolution (original ``ConvLayer``) over directed edges s -> t.

    .. math::
        z_{st} &= \mathrm{BN_1}(W [h_t ; h_s ; u_{st}] + b), \quad z_{st} = [f_{st} ; c_{st}] \\
        h'_t &= \mathrm{softplus}(h_t + \mathrm{BN_2}(\textstyle\sum_{s \to t}
               \sigma(f_{st}) \odot \mathrm{softplus}(c_{st})))

    Args:
        atom_features: node width F (64).
        edge_features: Gaussian basis width G (41).

    Shapes:
        h: [N, F]; u: [E, G]; edge_index: [2, E] (row 0 = source). output: [N, F].
    """

    def __init__(self, atom_features: int, edge_features: int) -> None:
        super().__init__()
        self.fc_full = nn.Linear(2 * atom_features + edge_features, 2 * atom_features)
        self.bn1 = nn.BatchNorm1d(2 * atom_features)
        self.bn2 = nn.BatchNorm1d(atom_features)

    def forward(self, h: torch.Tensor, u: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """One CGCNN update of the node features."""
        src, dst = edge_index[0], edge_index[1]
        z = self.bn1(self.fc_full(torch.cat([h[dst], h[src], u], dim=1)))  # [E, 2F]
        gate, core = z.chunk(2, dim=1)  # [E, 2F] -> 2 x [E, F]
        messages = torch.sigmoid(gate) * F.softplus(core)
        summed = scatter(messages, dst, dim=0, dim_size=h.shape[0], reduce="sum")  # [E, F] -> [N, F]
        return F.softplus(h + self.bn2(summed))


class CGCNNEncoder(nn.Module):
    """CGCNN encoder to CGCNN's pooled crystal vector (docs/method.md §5.1).

    h0 = Lin(92 -> F)(cgcnn[z]); ``n_conv`` CGCNNConv layers; per-crystal mean;
    out = softplus(Lin(F -> h_fea_len)(softplus(pooled))).

    Args:
        atom_table: float [104, 92] CGCNN table (a buffer) or None (zeros, filled by a state_dict).
        atom_fea_len: F (64).
        n_conv: number of convolutions (3).
        h_fea_len: output width (128).
        radius: last Gaussian centre in Angstrom (8.0).
        step: Gaussian spacing and width in Angstrom (0.2).
        readout: "mean" (CGCNN) or "sum".

    Shapes:
        batch.z: [N]; batch.edge_index: [2, E]; batch.edge_vec: [E, 3]; batch.batch: [N].
        output: [B, h_fea_len].
    """

    def __init__(
        self,
        atom_table: torch.Tensor | None,
        atom_fea_len: int = 64,
        n_conv: int = 3,
        h_fea_len: int = 128,
        radius: float = 8.0,
        step: float = 0.2,
        readout: str = "mean",
    ) -> None:
        super().__init__()
        bins = round(radius / step) + 1
        self.out_features = h_fea_len
        self.reduce = readout
        self.atom_features = AtomFeatures(atom_table)
        self.embedding = nn.Linear(self.atom_features.out_features, atom_fea_len)
        self.distance_expansion = RBFExpansion(0.0, radius, bins, gamma=1.0 / step**2)
        self.convs = nn.ModuleList(CGCNNConv(atom_fea_len, bins) for _ in range(n_conv))
        self.conv_to_fc = nn.Linear(atom_fea_len, h_fea_len)

    def forward(self, batch) -> torch.Tensor:
        """Encode a torch_geometric Batch into crystal vectors [B, h_fea_len]."""
        h = self.embedding(self.atom_features(batch.z))
        u = self.distance_expansion(torch.linalg.vector_norm(batch.edge_vec, dim=1))
        for conv in self.convs:
            h = conv(h, u, batch.edge_index)
        pooled = readout(h, batch=batch.batch, num_graphs=batch.num_graphs, reduce=self.reduce)
        return F.softplus(self.conv_to_fc(F.softplus(pooled)))
