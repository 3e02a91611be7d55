"""The fused EGGC and optimizer against the reference code, on real JARVIS crystals.

The reference (the unfused layer, line graph and encoder forward as they were before the fused
kernels) lives in tests/train_reference.py: one copy, compared against here and timed by
bench/bench_train_throughput.py.
"""

from __future__ import annotations

import torch
import train_reference as reference
from torch_geometric.data import Batch

from crys_pipeline.models import build_model
from crys_pipeline.models.alignn import EdgeGatedGraphConv
from crys_pipeline.settings import ModelSettings
from crys_pipeline.train import make_optimizer
from crys_pipeline.train.optim import param_groups

SMALL = ModelSettings(hidden_features=16, alignn_layers=2, gcn_layers=2)


def _pair(batch: Batch):
    return reference.new_pair(batch, SMALL)


def test_fused_layer_equals_reference_layer_on_a_real_batch(batch: Batch) -> None:
    """Outputs, input gradients and parameter gradients of one EGGC (float64, training mode) to 1e-6."""
    torch.manual_seed(0)
    conv = EdgeGatedGraphConv(16).double().train()
    ref = reference.to_reference(conv).double().train()
    gen = torch.Generator().manual_seed(2)
    h = torch.randn(batch.num_nodes, 16, generator=gen, dtype=torch.float64)
    e = torch.randn(batch.edge_index.shape[1], 16, generator=gen, dtype=torch.float64)
    h1, e1 = h.clone().requires_grad_(), e.clone().requires_grad_()
    h2, e2 = h.clone().requires_grad_(), e.clone().requires_grad_()
    out, want = conv(h1, e1, batch.edge_index), ref(h2, e2, batch.edge_index)
    weights = torch.randn(2, 16, generator=gen, dtype=torch.float64)
    for o, w in ((out, weights), (want, weights)):
        ((o[0] * w[0]).sum() + (torch.tanh(o[1]) * w[1]).sum()).backward()
    for got, exp in ((out[0], want[0]), (out[1], want[1]), (h1.grad, h2.grad), (e1.grad, e2.grad)):
        assert torch.allclose(got, exp, atol=1e-6, rtol=0)
    grads = reference.reference_grads(ref, conv)
    for name, param in conv.named_parameters():
        assert torch.allclose(param.grad, grads[name], atol=1e-6, rtol=0), name
    for norm in ("bn_nodes", "bn_edges"):  # running statistics updated as nn.BatchNorm1d does
        for stat in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.allclose(getattr(getattr(conv, norm), stat), getattr(getattr(ref, norm), stat)), stat
    assert out[0].abs().max() > 0.1 and h1.grad.abs().max() > 0.01


def test_model_loss_and_gradients_equal_the_reference(batch: Batch) -> None:
    """The whole CrysMMNet (float32) on the real batch: same loss and gradients as the reference code."""
    same, detail = reference.same_numbers(batch)
    assert same, detail


def test_compiled_path_equals_the_reference(batch: Batch) -> None:
    """train.compile: torch.compile's kernels of the same math give the reference's loss and gradients."""
    same, detail = reference.same_numbers(batch, compiled=True)
    assert same, detail


def test_seed_gives_the_reference_initial_weights_and_old_state_dicts_load(batch: Batch) -> None:
    """Same seed -> the reference's initial weights; a reference-layout state_dict loads and predicts the same."""
    torch.manual_seed(5)
    ref = reference.ReferenceEdgeGatedGraphConv(16)
    torch.manual_seed(5)
    conv = EdgeGatedGraphConv(16)
    for name in ("src_gate", "dst_update", "dst_gate", "src_update"):
        weight, bias = conv.block(name)
        assert torch.equal(weight, getattr(ref, name).weight) and torch.equal(bias, getattr(ref, name).bias)
    assert torch.equal(conv.edge_gate.weight, ref.edge_gate.weight)
    loaded = EdgeGatedGraphConv(16)
    loaded.load_state_dict(ref.state_dict())
    assert torch.equal(loaded.node_linear.weight, conv.node_linear.weight)
    torch.manual_seed(0)
    model = build_model("crysmmnet", SMALL, atom_table=None, text_dim=reference.TEXT_DIM)
    old_layout = reference.reference_model(model).state_dict()
    fresh = build_model("crysmmnet", SMALL, atom_table=None, text_dim=reference.TEXT_DIM)
    fresh.load_state_dict(old_layout)
    model.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(batch), model(batch))


def test_reference_atomic_numbers_are_pymatgen_s() -> None:
    """The reference batch's pymatgen-free symbol table (for the GPU machine) agrees with pymatgen on Z = 1..103."""
    from crys_pipeline.graphs import atomic_number

    assert len(reference.Z_OF) == 103 and all(atomic_number(s) == z for s, z in reference.Z_OF.items())


def test_default_crysmmnet_keeps_its_parameter_count() -> None:
    """A fused Linear(256, 1024) holds what four Linear(256, 256) held: 4,109,057 parameters in all."""
    model = build_model("crysmmnet", atom_table=None)
    conv = model.graph_encoder.gcn_layers[0]
    assert conv.node_linear.weight.shape == (1024, 256)
    assert sum(p.numel() for p in conv.parameters()) == 329_984
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 4_109_057


def test_fused_optimizer_equals_per_tensor_adamw(batch: Batch) -> None:
    """Five steps of make_optimizer's AdamW == the per-tensor AdamW (same groups, same real gradients).

    The gradients of the real batch are computed once and fed to both optimizers at every step (scaled
    per step), so the comparison isolates the optimizer: parameters whose true gradient is zero (the
    biases in front of a BatchNorm) would otherwise follow their rounding noise through Adam.
    """
    (model, _), _ = _pair(batch)
    twin = build_model("crysmmnet", SMALL, atom_table=None, text_dim=reference.TEXT_DIM).train()
    twin.load_state_dict(model.state_dict())
    reference.loss_of(model, batch).backward()
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    fused = make_optimizer(model, 1e-3, 1e-2)
    loop = torch.optim.AdamW(param_groups(twin, 1e-2), lr=1e-3, foreach=False, fused=False)
    assert fused.defaults["fused"] or fused.defaults["foreach"]
    start = [p.detach().clone() for p in model.parameters()]
    for step in range(5):
        for net, opt in ((model, fused), (twin, loop)):
            for param, grad in zip(net.parameters(), grads, strict=True):
                param.grad = None if grad is None else grad * (1.0 - 0.3 * step)
            opt.step()
    moved = 0.0
    with torch.no_grad():
        for (name, p), q, p0 in zip(model.named_parameters(), twin.parameters(), start, strict=True):
            assert torch.allclose(p, q, atol=1e-6, rtol=1e-6), name
            moved = max(moved, float((p - p0).abs().max()))
    assert moved > 1e-3  # the steps did move the weights
