"""Building blocks shared by the encoders and heads (docs/method.md §4.1, §4.5).

RBF expansions, the Linear-BatchNorm-SiLU block, the fixed CGCNN atom-feature lookup,
per-crystal readout and the CrysMMNet projection heads. Torch only: tensors in, tensors out.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch_geometric.utils import scatter

from crys_pipeline.atom_features import N_FEATURES, N_ROWS
from crys_pipeline.models.fused import mlp_block

log = logging.getLogger(__name__)

#: Rows of the CGCNN atom-feature table (Z = 0..103) and its width (docs/method.md §2.5): the one table
#: `atom_features` ships and ingest checks every element against.
ATOM_TABLE_SHAPE = (N_ROWS, N_FEATURES)


class RBFExpansion(nn.Module):
    """Gaussian radial-basis expansion of a scalar per item.

    feature_k(u) = exp(-gamma * (u - mu_k)^2), mu_k = linspace(vmin, vmax, bins). With ``gamma=None``
    gamma = 1 / delta, delta = (vmax - vmin) / (bins - 1) (ALIGNN's "lengthscale" convention,
    docs/method.md §4.1: 1/delta, not 1/delta^2). CGCNN's GaussianDistance passes gamma = 1 / step^2 explicitly.

    Args:
        vmin: first centre.
        vmax: last centre.
        bins: number of centres K.
        gamma: width parameter; None = 1 / delta.

    Shapes:
        input: [M] scalars (distances or bond-angle cosines).
        output: [M, K].
    """

    def __init__(self, vmin: float, vmax: float, bins: int, gamma: float | None = None) -> None:
        super().__init__()
        self.register_buffer("centers", torch.linspace(vmin, vmax, bins), persistent=False)
        self.gamma = float(gamma) if gamma is not None else (bins - 1) / (vmax - vmin)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """Expand ``values`` [M] into [M, K] Gaussian features."""
        diff = values.unsqueeze(1) - self.centers  # [M, 1] - [K] -> [M, K]
        return torch.exp(-self.gamma * diff**2)


class MLPLayer(nn.Module):
    """MLPL(a -> b) = SiLU(BatchNorm1d(Linear(a -> b))) (ALIGNN's MLPLayer).

    The submodule is named ``layer`` (a Sequential) so its BatchNorm parameters are named
    ``layer.1.*``; the reference's name-based weight-decay rule therefore decays them (docs/method.md §9).

    Args:
        in_features: a.
        out_features: b.

    Shapes:
        input: [M, a]; output: [M, b].
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            nn.Linear(in_features, out_features), nn.BatchNorm1d(out_features), nn.SiLU()
        )
        self.compiled = False  # fused.use_compiled: one torch.compile'd kernel chain instead of three modules

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply Linear, BatchNorm, SiLU."""
        if self.compiled:
            return mlp_block(x, self.layer[0], self.layer[1])
        return self.layer(x)


class AtomFeatures(nn.Module):
    """Fixed CGCNN 92-dim atom descriptors looked up by atomic number (docs/method.md §2.5).

    The table is a registered (persistent) buffer, not a parameter: it travels with the
    state_dict and never reaches the optimiser. ``table=None`` registers a zero table of
    the right shape, to be filled by ``load_state_dict`` from a checkpoint.

    Args:
        table: float [104, 92] (row Z = features of element Z, row 0 zeros) or None.

    Shapes:
        input: z LongTensor [N]; output: [N, 92].
    """

    def __init__(self, table: torch.Tensor | None) -> None:
        super().__init__()
        if table is None:
            log.warning("atom_table=None: registering a zero table; load a state_dict before use")
            table = torch.zeros(ATOM_TABLE_SHAPE)
        if tuple(table.shape) != ATOM_TABLE_SHAPE:
            raise ValueError(f"atom table must have shape {ATOM_TABLE_SHAPE}, got {tuple(table.shape)}")
        self.register_buffer("atom_table", table.detach().to(torch.float32).clone())

    @property
    def out_features(self) -> int:
        """Width of the descriptor (92)."""
        return self.atom_table.shape[1]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Rows of the table for atomic numbers ``z``."""
        return self.atom_table[z]


def readout(x: torch.Tensor, *, batch: torch.Tensor, num_graphs: int, reduce: str = "mean") -> torch.Tensor:
    """Per-crystal pooling of node features.

    Args:
        x: node features [N, F].
        batch: crystal index of each node [N].
        num_graphs: B.
        reduce: "mean" (ALIGNN AvgPooling, the reference) or "sum" (the paper's Eq. 5).

    Returns:
        [B, F].
    """
    if reduce not in ("mean", "sum"):
        raise ValueError(f"readout must be 'mean' or 'sum', got {reduce!r}")
    return scatter(x, batch, dim=0, dim_size=num_graphs, reduce=reduce)


class ProjectionHead(nn.Module):
    """CrysMMNet ProjectionHead: p = Lin(in -> d)(v); out = LayerNorm(p + Dropout(Lin(d -> d)(GELU(p)))).

    Args:
        embedding_dim: input width (256 graph, 768 text).
        projection_dim: output width d (64).
        dropout: dropout probability on the residual branch (0.1).

    Shapes:
        input: [B, embedding_dim]; output: [B, projection_dim].
    """

    def __init__(self, embedding_dim: int, projection_dim: int = 64, dropout: float = 0.1) -> None:
        super().__init__()
        self.projection = nn.Linear(embedding_dim, projection_dim)
        self.gelu = nn.GELU()
        self.fc = nn.Linear(projection_dim, projection_dim)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(projection_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project and normalise."""
        projected = self.projection(x)
        return self.layer_norm(projected + self.dropout(self.fc(self.gelu(projected))))


class PaperTextProjection(nn.Module):
    """The paper's text projection (docs/method.md §4.5, paper head): z_T = W2(ReLU(W1 c)), 768 -> 128 -> 64.

    Args:
        embedding_dim: text embedding width (768).
        hidden: width of W1's output (128).
        projection_dim: output width (64).

    Shapes:
        input: [B, embedding_dim]; output: [B, projection_dim].
    """

    def __init__(self, embedding_dim: int, hidden: int = 128, projection_dim: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(embedding_dim, hidden)
        self.fc2 = nn.Linear(hidden, projection_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Two-layer ReLU MLP."""
        return self.fc2(torch.relu(self.fc1(x)))


class FusionMLP(nn.Module):
    """Prediction MLP y = Lin(hidden -> 1)(ReLU(Lin(in -> hidden)(v))) (code head fusion, docs/method.md §4.5).

    Names ``fc1`` / ``fc`` follow the reference.

    Args:
        in_features: width of the (concatenated) input: 128 code head, 320 paper head, 64 text-only.
        hidden: 64.

    Shapes:
        input: [B, in_features]; output: [B, 1].
    """

    def __init__(self, in_features: int, hidden: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Two-layer ReLU MLP to one output."""
        return self.fc(torch.relu(self.fc1(x)))
