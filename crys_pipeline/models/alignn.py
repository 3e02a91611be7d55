"""ALIGNN graph encoder on PyTorch + torch_geometric (docs/method.md §4.1-4.4).

Edge-gated graph convolution (EGGC), the ALIGNN layer (crystal-graph EGGC, then line-graph EGGC)
and the encoder that embeds atoms, bonds and bond angles, runs 4 ALIGNN + 4 EGGC layers and
mean-pools per crystal. The line graph is built per batch inside ``forward``; the index tensors
of each graph are built once per forward (``fused.EdgePlan``) and shared by all layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from crys_pipeline.models.fused import EdgePlan, edge_plan, eggc
from crys_pipeline.models.layers import AtomFeatures, MLPLayer, RBFExpansion, readout
from crys_pipeline.models.line_graph import line_graph

#: A per-layer hook of ``ALIGNNEncoder.atom_states``: (layer index, h [N, H], e [E, H]) -> (h, e).
Condition = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
#: Reference names of the node-side maps, in the order of ``EdgeGatedGraphConv.node_linear``'s blocks.
NODE_BLOCKS = ("src_gate", "dst_update", "dst_gate", "src_update")


class EdgeGatedGraphConv(nn.Module):
    r"""Edge-gated graph convolution EGGC(G; h, e) over directed edges s -> t (docs/method.md §4.2).

    .. math::
        g_{st} &= A h_s + B h_t + C e_{st} \\
        a_t &= \frac{\sum_{s \to t} \sigma(g_{st}) \odot V h_s}{\sum_{s \to t} \sigma(g_{st}) + 10^{-6}} \\
        h'_t &= h_t + \mathrm{SiLU}(\mathrm{BN_{node}}(U h_t + a_t)) \\
        e'_{st} &= e_{st} + \mathrm{SiLU}(\mathrm{BN_{edge}}(g_{st}))

    A = src_gate, B = dst_gate, C = ``edge_gate``, U = src_update (applied to the receiving node
    itself, as in the released code), V = dst_update (applied to the sending neighbour): the five
    Linear(H, H) layers with bias of CrysMMNet/ALIGNN ``EdgeGatedGraphConv``. The four node-side maps
    are stored as one ``node_linear`` = Linear(H, 4H) with output blocks [A | V | B | U] (the same
    parameter count) and run as one fused kernel (``crys_pipeline.models.fused``). Aggregation is a
    sum onto ``edge_index[1]``; nodes without in-edges get a_t = 0. The edge output is built from the
    raw gate logits g (the code, not the paper's Eq. 3/4). A state_dict with the five separate
    Linear layers (``src_gate``, ``dst_gate``, ``dst_update``, ``src_update``) loads as well.

    Args:
        features: H, the node and edge width (input = output).

    Shapes:
        h: [N, H] node features; e: [E, H] edge features; graph: edge_index [2, E] (row 0 = source s)
        or its ``EdgePlan``. output: (h' [N, H], e' [E, H]).
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        # Initialised in the reference's construction order (src_gate, dst_gate, edge_gate, src_update,
        # dst_update), so a seed gives the reference's initial weights.
        self.node_linear = nn.utils.skip_init(nn.Linear, features, len(NODE_BLOCKS) * features)
        self._init_blocks("src_gate", "dst_gate")
        self.edge_gate = nn.Linear(features, features)
        self.bn_edges = nn.BatchNorm1d(features)
        self._init_blocks("src_update", "dst_update")
        self.bn_nodes = nn.BatchNorm1d(features)
        self.compiled = False  # fused.use_compiled: torch.compile's kernels instead of the hand-written ones

    @torch.no_grad()
    def _init_blocks(self, *names: str) -> None:
        """``nn.Linear.reset_parameters`` of the named blocks, in order (the same random draws)."""
        for name in names:
            weight, bias = self.block(name)
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
            nn.init.uniform_(bias, -1.0 / math.sqrt(weight.shape[1]), 1.0 / math.sqrt(weight.shape[1]))

    def block(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight [H, H], bias [H]) of one node-side map by its reference name (views, not copies)."""
        width = self.node_linear.in_features
        rows = slice(NODE_BLOCKS.index(name) * width, (NODE_BLOCKS.index(name) + 1) * width)
        return self.node_linear.weight[rows], self.node_linear.bias[rows]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """Accept the reference layout (four separate node-side Linear layers) by concatenating them."""
        if f"{prefix}src_gate.weight" in state_dict:
            for kind in ("weight", "bias"):
                parts = [state_dict.pop(f"{prefix}{name}.{kind}") for name in NODE_BLOCKS]
                state_dict[f"{prefix}node_linear.{kind}"] = torch.cat(parts)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(
        self, h: torch.Tensor, e: torch.Tensor, graph: torch.Tensor | EdgePlan
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One gated message-passing step; returns updated (node, edge) features."""
        plan = graph if isinstance(graph, EdgePlan) else edge_plan(graph, h.shape[0])
        return eggc(h, e=e, plan=plan, node_linear=self.node_linear, edge_gate=self.edge_gate,
                    bn_nodes=self.bn_nodes, bn_edges=self.bn_edges, compiled=self.compiled)


class ALIGNNLayer(nn.Module):
    """ALIGNN layer (docs/method.md §4.3): crystal-graph EGGC, whose bond output feeds the line-graph EGGC.

    (h, m) <- EGGC_G(h, e); (e, t) <- EGGC_L(G)(m, t). Submodule names follow the reference
    (``node_update``, ``edge_update``).

    Args:
        features: H.

    Shapes:
        h: [N, H]; e: [E, H]; t: [T, H]; edge_index: [2, E]; lg_index: [2, T] (indices into edges);
        either index may be given as its ``EdgePlan``.
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
        edge_index: torch.Tensor | EdgePlan,
        lg_index: torch.Tensor | EdgePlan,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Crystal-graph update, then line-graph update."""
        h, m = self.node_update(h, e, edge_index)
        e, t = self.edge_update(m, t, lg_index)
        return h, e, t


class ALIGNNEncoder(nn.Module):
    """ALIGNN crystal encoder to a pooled per-crystal vector (docs/method.md §4.1-4.5).

    h0 = MLPL(92 -> H)(cgcnn[z]); e0 = MLPL(64 -> H)(MLPL(80 -> 64)(RBF_80[0, 8](|r|)));
    t0 = MLPL(64 -> H)(MLPL(40 -> 64)(RBF_40[-1, 1](cos))); then ``alignn_layers`` ALIGNN layers
    and ``gcn_layers`` EGGC layers; readout = per-crystal mean (or sum) of h.

    Args:
        atom_table: float [104, 92] CGCNN table (a buffer) or None (zeros, filled by a state_dict).
        hidden_features: H (paper: 256).
        alignn_layers: number of ALIGNN layers (paper: 4).
        gcn_layers: number of crystal-graph EGGC layers after them (paper: 4).
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
        hidden_features: int,
        alignn_layers: int,
        gcn_layers: int,
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
        return readout(self.atom_states(batch), batch=batch.batch, num_graphs=batch.num_graphs, reduce=self.reduce)

    def atom_states(self, batch, condition: Condition | None = None) -> torch.Tensor:
        """Atom features [N, H] after every layer; `condition(l, h, e) -> (h, e)` runs before layer l (FiLM, §11)."""
        edge_index, edge_vec = batch.edge_index, batch.edge_vec
        h = self.atom_embedding(self.atom_features(batch.z))
        e = self.edge_embedding(torch.linalg.vector_norm(edge_vec, dim=1))
        crystal = edge_plan(edge_index, h.shape[0])  # index tensors shared by every layer on this graph
        if len(self.alignn_layers) > 0:
            lg_index, cos = line_graph(edge_index, edge_vec, h.shape[0])
            t = self.angle_embedding(cos)
            angles = edge_plan(lg_index, e.shape[0])
            for i, layer in enumerate(self.alignn_layers):
                h, e = condition(i, h, e) if condition else (h, e)
                h, e, t = layer(h, e, t, crystal, angles)
        for i, layer in enumerate(self.gcn_layers, start=len(self.alignn_layers)):
            h, e = condition(i, h, e) if condition else (h, e)
            h, e = layer(h, e, crystal)
        return h
