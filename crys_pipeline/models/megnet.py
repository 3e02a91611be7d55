"""MEGNet crystal encoder on the shared k-NN graph (Chen, Ye, Zuo, Zheng & Ong, Chem. Mater. 2019).

Paper defaults (the ``megnet`` package's ``MEGNetModel``): three MEGNet blocks with
phi_e = phi_v = phi_u = Dense(64)-Dense(64)-Dense(32), pre-block Dense(64)-Dense(32) on each input,
residual connections, shifted softplus ``softplus2(x) = softplus(x) - ln 2`` after every Dense,
mean aggregations, Set2Set readouts (3 steps, width 16) over atoms and over bonds, then
[atoms ; bonds ; state] -> Dense(32) -> Dense(16); bond features are Gaussians of the distance,
exp(-(d - mu)^2 / 0.5^2) with 100 centres. The encoder output is that 16-wide crystal vector; the
graph-only variant adds MEGNet's own output layer Linear(16, 1).

This project's choices (the CrysMMNet paper gives no MEGNet settings), also listed in
``MEGNetEncoder.settings()`` and so in each run's model.json:

- graph: our ALIGNN k-NN graph (cutoff 8, 12 neighbours) instead of MEGNet's 4 Angstrom radius graph,
  so the 100 Gaussian centres span 0-8 Angstrom (MEGNet: 0-5) at MEGNet's width 0.5;
- atoms: the fixed CGCNN 92-dim descriptors every encoder here uses, not a learned 16-dim embedding;
- global state: the per-crystal mean of those atom descriptors (MEGNet's crystal models use [0, 0]);
- Set2Set gates: logistic sigmoid (the Keras layer's recurrent activation is hard sigmoid).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch_geometric.utils import scatter, softmax

from crys_pipeline.models.layers import AtomFeatures, RBFExpansion

_LN2 = math.log(2.0)


def softplus2(x: torch.Tensor) -> torch.Tensor:
    """MEGNet's shifted softplus, softplus(x) - ln 2 (zero at zero)."""
    return F.softplus(x) - _LN2


class DenseStack(nn.Module):
    """Dense layers each followed by softplus2 (MEGNet's ``ff`` and phi networks).

    Args:
        in_features: input width.
        widths: output width of each Dense layer in order, e.g. (64, 64, 32).

    Shapes:
        input: [M, in_features]; output: [M, widths[-1]].
    """

    def __init__(self, in_features: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        sizes = (in_features, *widths)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply every Dense + softplus2 in turn."""
        for layer in self.layers:
            x = softplus2(layer(x))
        return x


class MEGNetLayer(nn.Module):
    r"""One MEGNet graph-network update of bonds, then atoms, then the state, over edges s -> t.

    .. math::
        e'_{st} &= \phi_e([v_s ; v_t ; e_{st} ; u_{g(t)}]) \\
        v'_t &= \phi_v([\mathrm{mean}_{s \to t}\, e'_{st} ; v_t ; u_{g(t)}]) \\
        u'_g &= \phi_u([\mathrm{mean}_{st \in g}\, e'_{st} ; \mathrm{mean}_{t \in g}\, v'_t ; u_g])

    g(t) is the crystal of atom t; an atom without in-edges gets a zero bond mean.

    Args:
        features: width W of atoms, bonds and state at the input (32).
        widths: Dense widths of each phi network ((64, 64, 32)).

    Shapes:
        v: [N, W]; e: [E, W]; u: [B, W]; edge_index: [2, E] (row 0 = source); node_graph: [N].
        output: (v' [N, widths[-1]], e' [E, widths[-1]], u' [B, widths[-1]]).
    """

    def __init__(self, features: int = 32, widths: tuple[int, ...] = (64, 64, 32)) -> None:
        super().__init__()
        self.phi_e = DenseStack(4 * features, widths)
        self.phi_v = DenseStack(3 * features, widths)
        self.phi_u = DenseStack(3 * features, widths)

    def forward(
        self, v: torch.Tensor, e: torch.Tensor, u: torch.Tensor, edge_index: torch.Tensor, node_graph: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Update bonds, atoms and state (in that order, each using the updated ones before it)."""
        src, dst = edge_index[0], edge_index[1]
        edge_graph = node_graph[dst]
        n_atoms, n_graphs = v.shape[0], u.shape[0]
        e_new = self.phi_e(torch.cat([v[src], v[dst], e, u[edge_graph]], dim=1))  # [E, 4W] -> [E, W']
        bonds_at = scatter(e_new, dst, dim=0, dim_size=n_atoms, reduce="mean")  # [E, W'] -> [N, W']
        v_new = self.phi_v(torch.cat([bonds_at, v, u[node_graph]], dim=1))  # [N, 3W] -> [N, W']
        bonds_in = scatter(e_new, edge_graph, dim=0, dim_size=n_graphs, reduce="mean")  # [E, W'] -> [B, W']
        atoms_in = scatter(v_new, node_graph, dim=0, dim_size=n_graphs, reduce="mean")  # [N, W'] -> [B, W']
        u_new = self.phi_u(torch.cat([bonds_in, atoms_in, u], dim=1))  # [B, 3W] -> [B, W']
        return v_new, e_new, u_new


class MEGNetBlock(nn.Module):
    """A MEGNet block: optional Dense(64)-Dense(32) on each input, a MEGNetLayer, residual additions.

    (v, e, u) <- (v, e, u) + MEGNetLayer(ff_v(v), ff_e(e), ff_u(u)); the first block has no ff.

    Args:
        features: width W of atoms, bonds and state (32), kept by the block.
        has_ff: whether the block starts with the ff networks.

    Shapes:
        as ``MEGNetLayer`` with widths[-1] = W.
    """

    def __init__(self, features: int = 32, has_ff: bool = True) -> None:
        super().__init__()
        ff = (2 * features, features)
        self.ff = nn.ModuleList(DenseStack(features, ff) for _ in range(3)) if has_ff else None
        self.layer = MEGNetLayer(features, (2 * features, 2 * features, features))

    def forward(
        self, v: torch.Tensor, e: torch.Tensor, u: torch.Tensor, edge_index: torch.Tensor, node_graph: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One residual block update."""
        inputs = (v, e, u) if self.ff is None else tuple(f(x) for f, x in zip(self.ff, (v, e, u), strict=True))
        dv, de, du = self.layer(*inputs, edge_index, node_graph)
        return v + dv, e + de, u + du


class Set2Set(nn.Module):
    r"""MEGNet's Set2Set readout (Vinyals et al. 2016) of a set of items per crystal.

    .. math::
        m_i &= W_m x_i + b_m \\
        (h, c) &\leftarrow \mathrm{LSTM}(q^*, c), \quad [i ; f ; \tilde c ; o] = K q^* + b_K,\
            c \leftarrow \sigma(f) c + \sigma(i) \tanh(\tilde c),\ h = \sigma(o) \tanh(c) \\
        a_i &= \mathrm{softmax}_{i \in g}(m_i \cdot h_g), \quad r_g = \textstyle\sum_{i \in g} a_i m_i,
            \quad q^*_g = [h_g ; r_g]

    repeated ``steps`` times from h = c = q* = 0; the output is the last q*. A crystal without items
    gets r = 0.

    Args:
        in_features: item width F.
        hidden: width n of m, h and c (16).
        steps: processing steps T (3).

    Shapes:
        x: [M, F]; index: [M] crystal of each item. output: [B, 2n].
    """

    def __init__(self, in_features: int, hidden: int = 16, steps: int = 3) -> None:
        super().__init__()
        self.hidden, self.steps = hidden, steps
        self.memory = nn.Linear(in_features, hidden)
        self.recurrent = nn.Linear(2 * hidden, 4 * hidden)

    def forward(self, x: torch.Tensor, index: torch.Tensor, num_graphs: int) -> torch.Tensor:
        """Attention readout of every crystal's items."""
        m = self.memory(x)  # [M, n]
        cell = x.new_zeros(num_graphs, self.hidden)
        q_star = x.new_zeros(num_graphs, 2 * self.hidden)
        for _ in range(self.steps):
            gate_i, gate_f, candidate, gate_o = self.recurrent(q_star).chunk(4, dim=1)  # [B, 4n] -> 4 x [B, n]
            cell = torch.sigmoid(gate_f) * cell + torch.sigmoid(gate_i) * torch.tanh(candidate)
            h = torch.sigmoid(gate_o) * torch.tanh(cell)
            scores = (m * h[index]).sum(dim=1)  # [M]
            attention = softmax(scores, index, num_nodes=num_graphs)  # [M], sums to 1 per crystal
            r = scatter(m * attention.unsqueeze(1), index, dim=0, dim_size=num_graphs, reduce="sum")  # [B, n]
            q_star = torch.cat([h, r], dim=1)
        return q_star


class MEGNetEncoder(nn.Module):
    """MEGNet encoder to MEGNet's 16-wide crystal vector.

    v0 = ff_v(cgcnn[z]); e0 = ff_e(Gauss(d)); u0 = ff_u(mean_{t in g} cgcnn[z_t]) (ff = Dense(64)-Dense(32));
    ``blocks`` residual MEGNet blocks; out = Dense(16)(Dense(32)([S2S(v) ; S2S(e) ; u])), softplus2 after each.

    Args:
        atom_table: float [104, 92] CGCNN table (a buffer) or None (zeros, filled by a state_dict).
        blocks: number of MEGNet blocks (3).
        n1: first Dense width of every phi and ff network (64).
        n2: width of atoms, bonds and state between blocks (32).
        n3: Set2Set width and output width (16).
        set2set_steps: Set2Set processing steps (3).
        bond_centres: Gaussian centres of the bond distance (100).
        radius: last Gaussian centre in Angstrom (8.0, project choice; MEGNet 5.0).
        width: Gaussian width in Angstrom (0.5).

    Shapes:
        batch.z: [N]; batch.edge_index: [2, E]; batch.edge_vec: [E, 3]; batch.batch: [N].
        output: [B, n3].
    """

    def __init__(
        self,
        atom_table: torch.Tensor | None,
        blocks: int = 3,
        n1: int = 64,
        n2: int = 32,
        n3: int = 16,
        set2set_steps: int = 3,
        bond_centres: int = 100,
        radius: float = 8.0,
        width: float = 0.5,
    ) -> None:
        super().__init__()
        if n1 != 2 * n2:
            raise ValueError(f"MEGNet blocks use n1 = 2 * n2, got n1={n1}, n2={n2}")
        self._settings = {
            "blocks": blocks, "n1": n1, "n2": n2, "n3": n3, "set2set_steps": set2set_steps,
            "bond_centres": bond_centres, "radius": radius, "width": width,
        }
        self.out_features = n3
        self.atom_features = AtomFeatures(atom_table)
        self.distance_expansion = RBFExpansion(0.0, radius, bond_centres, gamma=1.0 / width**2)
        self.ff_atoms = DenseStack(self.atom_features.out_features, (n1, n2))
        self.ff_bonds = DenseStack(bond_centres, (n1, n2))
        self.ff_state = DenseStack(self.atom_features.out_features, (n1, n2))
        self.blocks = nn.ModuleList(MEGNetBlock(n2, has_ff=i > 0) for i in range(blocks))
        self.atom_set2set = Set2Set(n2, n3, set2set_steps)
        self.bond_set2set = Set2Set(n2, n3, set2set_steps)
        self.head = DenseStack(4 * n3 + n2, (n2, n3))

    def settings(self) -> dict[str, Any]:
        """Hyper-parameters and this project's choices, for model.json."""
        return {
            "encoder": "megnet",
            "hyperparameters": {**self._settings, "activation": "softplus2", "aggregation": "mean",
                                "readout": "set2set", "atom_input": "cgcnn92",
                                "state_init": "mean_atom_features"},
            "project_choices": {
                "radius": "Gaussian centres span the k-NN graph's 0-8 A (MEGNet: 0-5 A on a 4 A radius graph)",
                "atom_input": "fixed CGCNN 92-dim descriptors as for every encoder here (MEGNet: learned 16-dim)",
                "state_init": "per-crystal mean of the atom descriptors (MEGNet crystals: [0, 0])",
                "set2set_gates": "logistic sigmoid (MEGNet's Keras Set2Set: hard sigmoid)",
            },
        }

    def forward(self, batch) -> torch.Tensor:
        """Encode a torch_geometric Batch into crystal vectors [B, n3]."""
        node_graph, n_graphs = batch.batch, batch.num_graphs
        atoms = self.atom_features(batch.z)  # [N, 92]
        v = self.ff_atoms(atoms)
        e = self.ff_bonds(self.distance_expansion(torch.linalg.vector_norm(batch.edge_vec, dim=1)))
        u = self.ff_state(scatter(atoms, node_graph, dim=0, dim_size=n_graphs, reduce="mean"))  # [B, 92] -> [B, n2]
        for block in self.blocks:
            v, e, u = block(v, e, u, batch.edge_index, node_graph)
        pooled = torch.cat(
            [self.atom_set2set(v, node_graph, n_graphs),
             self.bond_set2set(e, node_graph[batch.edge_index[1]], n_graphs), u],
            dim=1,
        )  # [B, 2 n3 + 2 n3 + n2]
        return self.head(pooled)
