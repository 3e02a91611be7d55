"""Line graph of a (batched) crystal graph, built per batch with tensor ops (SPEC.md 2.6-2.7).

Nodes of L(G) are the directed edges of G. For every pair of edges A = (a -> b) and B = (b -> c),
i.e. head(A) == tail(B), L(G) has an edge A -> B, backtracking pairs (B the reverse of A) and
every other periodic image included (DGL ``line_graph(backtracking=True)``, as ALIGNN uses).
Its feature is the cosine of the bond angle at b between b -> a and b -> c.

Construction (CSR expansion, no Python loop): sort the edges by source to get, per node, the slice
of its out-edges; each edge A takes the slice of its head node, expanded with
``repeat_interleave`` and cumulative offsets. Runs on whatever device the inputs are on.
"""

from __future__ import annotations

import torch


def line_graph(edge_index: torch.Tensor, edge_vec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Triplets (A, B) with head(A) == tail(B) and the cosine of their bond angle.

    Args:
        edge_index: LongTensor [2, E]; row 0 source, row 1 target (a batched graph is fine).
        edge_vec: float [E, 3] bond vectors source -> target.

    Returns:
        (lg_index LongTensor [2, T]: row 0 the edge id A, row 1 the edge id B;
         cos float [T]: ((-r_A) . r_B) / (|r_A| |r_B|), clamped to [-1, 1]; exactly 1 for backtracking
         pairs, whose r_B is exactly -r_A).
        T = sum over nodes of indeg * outdeg.
    """
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


def bond_cosines(r_a: torch.Tensor, r_b: torch.Tensor) -> torch.Tensor:
    """cos of the angle between -r_a and r_b, clamped to [-1, 1].

    Written as ``dot / sqrt(|r_a|^2 |r_b|^2)`` with the dot and both squared norms from the same
    reduction, so that r_b == -r_a gives exactly 1 (sqrt(x * x) == x in IEEE arithmetic).

    Args:
        r_a: float [T, 3] incoming bond vectors (a -> b).
        r_b: float [T, 3] outgoing bond vectors (b -> c).

    Returns:
        float [T].
    """
    dot = torch.sum(-r_a * r_b, dim=-1)  # [T]
    norms = torch.sum(r_a * r_a, dim=-1) * torch.sum(r_b * r_b, dim=-1)  # [T]
    return torch.clamp(dot / torch.sqrt(norms).clamp_min(torch.finfo(r_a.dtype).tiny), -1.0, 1.0)
