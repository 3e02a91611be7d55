"""Line graph built per batch (crys_pipeline.models.line_graph) on real crystal graphs and toy graphs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA

from crys_pipeline.graphs import knn_graph
from crys_pipeline.models.line_graph import line_graph


def naive_line_graph(edge_index: torch.Tensor, edge_vec: torch.Tensor) -> dict[tuple[int, int], float]:
    """(A, B) -> cos for every pair of edges with head(A) == tail(B), by a plain double loop."""
    src, dst = edge_index.tolist()
    out = {}
    for a in range(len(src)):
        for b in range(len(src)):
            if dst[a] == src[b]:
                ra, rb = (-edge_vec[a]).double().tolist(), edge_vec[b].double().tolist()
                dot = sum(x * y for x, y in zip(ra, rb, strict=True))
                out[(a, b)] = dot / (math.sqrt(sum(x * x for x in ra)) * math.sqrt(sum(x * x for x in rb)))
    return out


def real_graphs(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """k-NN graphs of the first n real JARVIS tiny structures."""
    graphs = []
    with open(SHARED_DATA / "jarvis_dft3d_2021_tiny.jsonl") as handle:
        for line in list(handle)[:n]:
            rec = json.loads(line)
            g = knn_graph(rec["lattice_mat"], rec["frac_coords"])
            graphs.append((torch.from_numpy(g.edge_index), torch.from_numpy(g.edge_vec)))
    return graphs


def batch(graphs: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate graphs with node offsets, as a PyG Batch does."""
    offset, indices = 0, []
    for edge_index, _ in graphs:
        indices.append(edge_index + offset)
        offset = int(edge_index.max()) + 1 + offset
    return torch.cat(indices, dim=1), torch.cat([vec for _, vec in graphs])


def test_matches_naive_loop_on_toy_graphs() -> None:
    # a directed triangle with one reverse edge, an isolated-target edge and a node with two out-edges
    edge_index = torch.tensor([[0, 1, 2, 1, 0, 3], [1, 2, 0, 0, 3, 0]])
    edge_vec = torch.tensor([[1.0, 0, 0], [0, 1, 0], [-1, -1, 0], [-1, 0, 0], [0, 0, 2], [0, 0, -2]])
    lg, cos = line_graph(edge_index, edge_vec)
    got = {(a, b): c for (a, b), c in zip(lg.t().tolist(), cos.tolist(), strict=True)}
    want = naive_line_graph(edge_index, edge_vec)
    assert got.keys() == want.keys() and len(got) == lg.shape[1]
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-6)


def test_matches_naive_loop_on_real_crystals() -> None:
    for edge_index, edge_vec in real_graphs(3):
        lg, cos = line_graph(edge_index, edge_vec)
        want = naive_line_graph(edge_index, edge_vec)
        got = dict(zip(map(tuple, lg.t().tolist()), cos.tolist(), strict=True))
        assert len(got) == lg.shape[1] == len(want)
        assert got.keys() == want.keys()
        assert max(abs(got[k] - v) for k, v in want.items()) < 1e-5


def test_batched_counts_bounds_and_backtracking() -> None:
    graphs = real_graphs(12)
    edge_index, edge_vec = batch(graphs)
    lg, cos = line_graph(edge_index, edge_vec)
    nodes = int(edge_index.max()) + 1
    indeg = torch.bincount(edge_index[1], minlength=nodes)
    outdeg = torch.bincount(edge_index[0], minlength=nodes)
    assert lg.shape[1] == int((indeg * outdeg).sum())
    assert torch.equal(edge_index[1, lg[0]], edge_index[0, lg[1]])  # head(A) == tail(B)
    assert cos.dtype == torch.float32 and bool(((cos >= -1) & (cos <= 1)).all())
    # a triplet never crosses crystals: both edges lie in the same crystal's block
    bounds = torch.cumsum(torch.tensor([vec.shape[0] for _, vec in graphs]), 0)
    assert torch.equal(torch.bucketize(lg[0], bounds, right=True), torch.bucketize(lg[1], bounds, right=True))
    back = (edge_index[0, lg[0]] == edge_index[1, lg[1]]) & (edge_vec[lg[1]] == -edge_vec[lg[0]]).all(dim=1)
    assert int(back.sum()) >= edge_index.shape[1]  # every edge has its reverse: at least one backtrack each
    assert bool((cos[back] == 1.0).all())
    assert float(cos.min()) < -0.9  # near-linear bond angles exist in these crystals, so cos is not one-sided


def test_per_crystal_triplets_equal_sum_of_squared_degrees() -> None:
    for edge_index, edge_vec in real_graphs(5):
        lg, _ = line_graph(edge_index, edge_vec)
        deg = torch.bincount(edge_index[0]).to(torch.int64)
        assert lg.shape[1] == int((deg * deg).sum())  # symmetric graph: indeg == outdeg


def test_empty_and_single_edge_pair() -> None:
    lg, cos = line_graph(torch.zeros((2, 0), dtype=torch.long), torch.zeros((0, 3)))
    assert lg.shape == (2, 0) and cos.shape == (0,)
    lg, cos = line_graph(torch.tensor([[0, 1], [1, 0]]), torch.tensor([[0.3, -1.7, 2.9], [-0.3, 1.7, -2.9]]))
    assert sorted(map(tuple, lg.t().tolist())) == [(0, 1), (1, 0)]
    assert cos.tolist() == [1.0, 1.0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_same_result_on_cuda() -> None:
    edge_index, edge_vec = batch(real_graphs(4))
    lg_cpu, cos_cpu = line_graph(edge_index, edge_vec)
    lg_gpu, cos_gpu = line_graph(edge_index.cuda(), edge_vec.cuda())
    assert lg_gpu.device.type == "cuda"
    assert torch.equal(lg_gpu.cpu(), lg_cpu)
    np.testing.assert_allclose(cos_gpu.cpu().numpy(), cos_cpu.numpy(), atol=1e-6)
