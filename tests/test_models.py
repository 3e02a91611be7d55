"""Tests of crys_pipeline.models on real JARVIS structures (docs/method.md §4, §6, §7.3-7.4)."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
from conftest import tiny_records
from torch_geometric.data import Batch, Data

from crys_pipeline.atom_features import cgcnn_feature_table
from crys_pipeline.graphs import atomic_number, knn_graph
from crys_pipeline.models import build_from_config, build_model
from crys_pipeline.models.alignn import EdgeGatedGraphConv
from crys_pipeline.models.layers import FusionMLP, MLPLayer, ProjectionHead, RBFExpansion
from crys_pipeline.settings import ModelSettings
from crys_pipeline.train.optim import decay_split, param_groups
from crys_pipeline.variants import VARIANTS

TEXT_DIM = 768
SMALL = ModelSettings(hidden_features=32, alignn_layers=2, gcn_layers=2)


def n_params(module: torch.nn.Module) -> int:
    """Trainable parameter count."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def atom_table() -> torch.Tensor:
    """The shipped CGCNN [104, 92] table (docs/method.md §2.5)."""
    return torch.from_numpy(cgcnn_feature_table())


def knn_data(rec: dict) -> Data:
    """The ALIGNN k-nearest graph (cutoff 8, k 12) of a real JARVIS record as a PyG Data."""
    graph = knn_graph(rec["lattice_mat"], rec["frac_coords"])
    return Data(
        z=torch.tensor([atomic_number(s) for s in rec["species"]], dtype=torch.long),
        edge_index=torch.from_numpy(graph.edge_index),
        edge_vec=torch.from_numpy(graph.edge_vec),
        num_nodes=len(rec["species"]),
    )


@pytest.fixture(scope="module")
def crystals() -> list[Data]:
    """Five small real JARVIS crystals (2-5 atoms) with a text embedding and 4 token states each."""
    gen, token_gen = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    graphs = []
    for rec in tiny_records("jarvis"):
        if rec["natoms"] <= 5 and len(graphs) < 5:
            graph = knn_data(rec)
            assert graph.edge_index.shape[1] > 0 and torch.all(torch.bincount(graph.edge_index[1]) > 0)
            graph.text_emb = torch.randn(1, TEXT_DIM, generator=gen)
            graph.tokens, graph.n_tokens = torch.randn(4, TEXT_DIM, generator=token_gen).half(), torch.tensor([4])
            graphs.append(graph)
    assert len(graphs) == 5
    return graphs


def warmed(model: torch.nn.Module, batch: Batch) -> torch.nn.Module:
    """Give BatchNorms non-trivial running statistics, then switch to eval mode."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(batch)
    return model.eval()


def test_default_crysmmnet_parameter_count(atom_table: torch.Tensor) -> None:
    """Released-code CrysMMNet (256, 4 ALIGNN + 4 GCN, code head) has 4,109,057 trainable parameters.

    An earlier count, 4,898,561 with 395,776 per EGGC, assumed six Linear(256, 256) per EGGC; the
    released EdgeGatedGraphConv has five (docs/method.md §4.2): 329,984. 4,898,561 - 12 x 65,792 =
    4,109,057. The ALIGNN baseline then has ALIGNN's published 4,026,753.
    """
    model = build_model("crysmmnet", atom_table=atom_table)
    enc = model.graph_encoder
    assert n_params(EdgeGatedGraphConv(256)) == 5 * (256 * 256 + 256) + 2 * 2 * 256 == 329_984
    assert n_params(enc.alignn_layers) == 8 * 329_984
    assert n_params(enc.gcn_layers) == 4 * 329_984
    embeddings = n_params(enc.atom_embedding) + n_params(enc.edge_embedding) + n_params(enc.angle_embedding)
    assert embeddings == 66_688
    assert n_params(model.graph_projection) == 20_736
    assert n_params(model.text_projection) == 53_504
    assert n_params(model.head) == 8_321
    assert n_params(model) == 4_109_057
    assert n_params(build_model("alignn", atom_table=atom_table)) == 4_026_753
    assert "graph_encoder.atom_features.atom_table" in dict(model.named_buffers())
    assert "graph_encoder.atom_features.atom_table" not in dict(model.named_parameters())
    assert torch.equal(model.state_dict()["graph_encoder.atom_features.atom_table"], atom_table)


def test_eggc_size_matches_alignn_package() -> None:
    """Our EGGC has as many parameters as alignn's own (pure-torch) EdgeGatedGraphConv at width 256."""
    from alignn.models.alignn_atomwise_pure import EdgeGatedGraphConvPure

    assert n_params(EdgeGatedGraphConv(256)) == n_params(EdgeGatedGraphConvPure(256, 256))


def test_baseline_parameter_counts(atom_table: torch.Tensor) -> None:
    """CGCNN = original defaults (80,833); CrysTextNet = PH_768 + Lin(64,64) + Lin(64,1)."""
    assert (
        n_params(build_model("cgcnn", atom_table=atom_table))
        == (92 * 64 + 64) + 3 * (169 * 128 + 128 + 2 * 128 + 2 * 64) + (64 * 128 + 128) + 129
    )
    assert n_params(build_model("crystextnet", atom_table=None)) == 53_504 + 64 * 64 + 64 + 65
    cm_cgcnn = build_model("crysmmnet_cgcnn", atom_table=atom_table)
    assert n_params(cm_cgcnn.graph_projection) == 128 * 64 + 64 + 64 * 64 + 64 + 128


def naive_eggc(conv: EdgeGatedGraphConv, h: torch.Tensor, e: torch.Tensor, edge_index: torch.Tensor):
    """EGGC written per edge and per node with Python loops (eval-mode BatchNorm by hand)."""

    def bn(x: torch.Tensor, norm: torch.nn.BatchNorm1d) -> torch.Tensor:
        return (x - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps) * norm.weight + norm.bias

    def lin(layer: torch.nn.Linear | str, x: torch.Tensor) -> torch.Tensor:
        weight, bias = conv.block(layer) if isinstance(layer, str) else (layer.weight, layer.bias)
        return weight @ x + bias

    silu = torch.nn.functional.silu
    gates = [
        lin("src_gate", h[s]) + lin("dst_gate", h[t]) + lin(conv.edge_gate, e[k])
        for k, (s, t) in enumerate(edge_index.T.tolist())
    ]
    h_out = []
    for t in range(h.shape[0]):
        num = torch.zeros(h.shape[1], dtype=h.dtype)
        den = torch.zeros(h.shape[1], dtype=h.dtype)
        for k, (s, tt) in enumerate(edge_index.T.tolist()):
            if tt == t:
                num += torch.sigmoid(gates[k]) * lin("dst_update", h[s])
                den += torch.sigmoid(gates[k])
        h_out.append(h[t] + silu(bn(lin("src_update", h[t]) + num / (den + 1e-6), conv.bn_nodes)))
    e_out = [e[k] + silu(bn(g, conv.bn_edges)) for k, g in enumerate(gates)]
    return torch.stack(h_out), torch.stack(e_out)


def test_eggc_matches_naive_loop() -> None:
    """EGGC equals the per-edge loop to 1e-6, including an isolated node (a_t = 0) and a multi-edge."""
    gen = torch.Generator().manual_seed(1)
    conv = EdgeGatedGraphConv(8).double().eval()
    with torch.no_grad():
        for p in conv.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
        for norm in (conv.bn_nodes, conv.bn_edges):
            norm.running_mean.copy_(torch.randn(8, generator=gen, dtype=torch.float64))
            norm.running_var.copy_(torch.rand(8, generator=gen, dtype=torch.float64) + 0.5)
    edge_index = torch.tensor([[0, 1, 1, 2, 0, 3, 3], [1, 0, 2, 1, 1, 0, 3]])
    h = torch.randn(5, 8, generator=gen, dtype=torch.float64)
    e = torch.randn(edge_index.shape[1], 8, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        h_out, e_out = conv(h, e, edge_index)
        h_ref, e_ref = naive_eggc(conv, h, e, edge_index)
    assert torch.allclose(h_out, h_ref, atol=1e-6, rtol=0)
    assert torch.allclose(e_out, e_ref, atol=1e-6, rtol=0)
    assert not torch.allclose(h_out[4], h[4])


def test_rbf_gamma_is_inverse_spacing() -> None:
    """gamma = 1/delta: 9.875 for 80 bins on [0, 8], 19.5 for 40 bins on [-1, 1] (docs/method.md §4.1)."""
    edge, angle = RBFExpansion(0.0, 8.0, 80), RBFExpansion(-1.0, 1.0, 40)
    assert edge.gamma == pytest.approx(9.875) and angle.gamma == pytest.approx(19.5)
    feats = edge(torch.tensor([0.0, 8.0 / 79]))
    assert feats.shape == (2, 80)
    assert feats[1, 1] == pytest.approx(1.0) and feats[1, 0] == pytest.approx(np.exp(-9.875 * (8 / 79) ** 2))


@pytest.mark.parametrize("variant", ["crysmmnet", "cgcnn", "crystextnet"])
def test_batching_equivalence(variant: str, atom_table: torch.Tensor, crystals: list[Data]) -> None:
    """In eval mode a batch predicts what the crystals predict one at a time (1e-5)."""
    torch.manual_seed(0)
    model = warmed(build_model(variant, SMALL, atom_table=atom_table), Batch.from_data_list(crystals))
    with torch.no_grad():
        together = model(Batch.from_data_list(crystals))
        alone = torch.cat([model(Batch.from_data_list([c])) for c in crystals])
    assert together.shape == (len(crystals),)
    assert torch.allclose(together, alone, atol=1e-5, rtol=0)
    assert together.std() > 0


def permuted(graph: Data, gen: torch.Generator) -> Data:
    """The same crystal with its atoms and its edges listed in a random order."""
    perm = torch.randperm(graph.num_nodes, generator=gen)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(graph.num_nodes)
    order = torch.randperm(graph.edge_index.shape[1], generator=gen)
    return Data(
        z=graph.z[perm],
        edge_index=inverse[graph.edge_index][:, order],
        edge_vec=graph.edge_vec[order],
        num_nodes=graph.num_nodes,
        text_emb=graph.text_emb,
    )


@pytest.mark.parametrize("variant", ["crysmmnet", "crysmmnet_cgcnn"])
def test_permutation_invariance(variant: str, atom_table: torch.Tensor, crystals: list[Data]) -> None:
    """Relabelling atoms (and reordering edges) of each crystal leaves the predictions unchanged."""
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(0)
    model = warmed(build_model(variant, SMALL, atom_table=atom_table), Batch.from_data_list(crystals))
    shuffled = [permuted(c, gen) for c in crystals]
    assert any(not torch.equal(a.z, b.z) for a, b in zip(crystals, shuffled, strict=True))
    with torch.no_grad():
        before = model(Batch.from_data_list(crystals))
        after = model(Batch.from_data_list(shuffled))
    assert torch.allclose(before, after, atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", ["crysmmnet", "crystextnet"])
def test_batch_of_one(variant: str, atom_table: torch.Tensor, crystals: list[Data]) -> None:
    """One crystal gives shape [1] in train (with backward) and eval mode (no squeeze hazard)."""
    model = build_model(variant, SMALL, atom_table=atom_table).train()
    out = model(Batch.from_data_list(crystals[:1]))
    assert out.shape == (1,)
    out.sum().backward()
    with torch.no_grad():
        assert model.eval()(Batch.from_data_list(crystals[1:2])).shape == (1,)


#: As in ALIGNN itself: the edge outputs of the last ALIGNN and the last GCN layer are discarded, so their
#: edge BatchNorms get no gradient (they are part of the reference parameter count all the same).
UNUSED_ALIGNN = {
    f"graph_encoder.{layer}.bn_edges.{p}"
    for layer in ("alignn_layers.3.edge_update", "gcn_layers.3")
    for p in ("weight", "bias")
}


@pytest.mark.parametrize(
    ("variant", "head"),
    [(v, "code") for v in sorted(VARIANTS)]
    + [(v, "paper") for v in ("crysmmnet", "crysmmnet_cgcnn", "crystextnet")],
)
def test_every_variant_trains(
    variant: str, head: str, atom_table: torch.Tensor, crystals: list[Data]
) -> None:
    """Each variant (default sizes) runs forward + backward on real crystals; every used parameter gets a gradient."""
    torch.manual_seed(0)
    model = build_model(variant, ModelSettings(head=head), atom_table=atom_table).train()
    out = model(Batch.from_data_list(crystals[:2]))
    assert out.shape == (2,) and torch.isfinite(out).all()
    torch.nn.functional.mse_loss(out, torch.arange(2, dtype=torch.float32)).backward()
    missing = {n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()}
    inner = "graph_encoder.encoder." if VARIANTS[variant].fusion != "concat" else "graph_encoder."  # §11 wrappers
    unused = {name.replace("graph_encoder.", inner, 1) for name in UNUSED_ALIGNN}
    assert missing == (unused if VARIANTS[variant].graph_encoder == "alignn" else set())
    assert sum(p.grad.abs().sum() for p in model.parameters() if p.grad is not None) > 0
    json.dumps(model.config)


def test_paper_head_dimensions(atom_table: torch.Tensor) -> None:
    """Paper head: z_G is the pooled 256 vector, z_T = Lin(128,64)(ReLU(Lin(768,128))), fusion on 320."""
    model = build_model("crysmmnet", ModelSettings(head="paper"), atom_table=atom_table)
    assert isinstance(model.graph_projection, torch.nn.Identity)
    assert n_params(model.text_projection) == 768 * 128 + 128 + 128 * 64 + 64
    assert isinstance(model.head, FusionMLP) and model.head.fc1.in_features == 320


def test_config_rebuilds_model(atom_table: torch.Tensor, crystals: list[Data]) -> None:
    """build_from_config(config) + load_state_dict (atom table included) reproduces the predictions."""
    settings = ModelSettings(hidden_features=32, alignn_layers=2, gcn_layers=2, head="paper", readout="sum")
    model = warmed(build_model("crysmmnet", settings, atom_table=atom_table), Batch.from_data_list(crystals))
    config = json.loads(json.dumps(model.config))
    assert config == {"variant": "crysmmnet", "text_dim": TEXT_DIM, **asdict(settings),  # the settings whole
                      "target_scaling": {"method": "none", "shift": 0.0, "scale": 1.0}}
    twin = build_from_config(config, atom_table=None)
    twin.load_state_dict(model.state_dict())
    twin.eval()
    with torch.no_grad():
        assert torch.equal(twin(Batch.from_data_list(crystals)), model(Batch.from_data_list(crystals)))


def test_param_groups_name_rule_decays_embedding_batchnorm(atom_table: torch.Tensor) -> None:
    """Reference rule: embedding-MLP BatchNorm affine params (``layer.1.*``) ARE decayed; EGGC bn_* and
    LayerNorm are not; the "type" rule exempts them all. Groups partition the trainable parameters."""
    model = build_model("crysmmnet", atom_table=atom_table)
    decay, no_decay = decay_split(model, "name")
    emb_bn = "graph_encoder.atom_embedding.layer.1.weight"
    assert isinstance(model.graph_encoder.atom_embedding, MLPLayer)
    assert emb_bn in decay and "graph_encoder.edge_embedding.1.layer.1.bias" in no_decay
    assert "graph_encoder.alignn_layers.0.node_update.bn_nodes.weight" in no_decay
    assert "graph_encoder.gcn_layers.3.node_linear.weight" in decay  # the fused src_gate | ... | src_update
    assert "graph_encoder.gcn_layers.3.node_linear.bias" in no_decay
    assert isinstance(model.text_projection, ProjectionHead)
    assert "text_projection.layer_norm.weight" in no_decay
    type_decay, type_no_decay = decay_split(model, "type")
    assert emb_bn in type_no_decay and set(type_decay) < set(decay)
    assert all(".weight" in n for n in type_decay)
    groups = param_groups(model, weight_decay=1e-5)
    assert [g["weight_decay"] for g in groups] == [1e-5, 0.0]
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters()) and len(set(ids)) == len(ids)
    torch.optim.AdamW(groups, lr=1e-3)


def test_build_model_rejects_unknown_names() -> None:
    """Unknown variant, head or decay filter are errors, not silent defaults."""
    with pytest.raises(ValueError, match=r"unknown model variant .schnet."):
        build_model("schnet", atom_table=None)
    with pytest.raises(ValueError, match="head"):
        build_model("crystextnet", ModelSettings(head="other"), atom_table=None)
    with pytest.raises(ValueError, match=r"unknown settings \['width'\]"):
        build_from_config({"variant": "alignn", "text_dim": 8, "width": 3}, atom_table=None)
    with pytest.raises(ValueError, match="decay_filter"):
        decay_split(ProjectionHead(4), "other")
