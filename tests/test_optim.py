"""FlatAdamW (crys_pipeline/train/optim.py) against torch's per-tensor AdamW, on real JARVIS crystals."""

from __future__ import annotations

import copy

import pytest
import torch
import train_reference as reference
from torch.profiler import ProfilerActivity, profile
from torch_geometric.data import Batch

from crys_pipeline.atom_features import cgcnn_feature_table
from crys_pipeline.models import build_model
from crys_pipeline.settings import ModelSettings
from crys_pipeline.train.optim import FlatAdamW, param_groups

SMALL = ModelSettings(hidden_features=16, alignn_layers=2, gcn_layers=2)


def _twins() -> tuple[torch.nn.Module, torch.nn.Module]:
    table = torch.from_numpy(cgcnn_feature_table())
    torch.manual_seed(0)
    model = build_model("crysmmnet", SMALL, atom_table=table, text_dim=reference.TEXT_DIM).train()
    twin = build_model("crysmmnet", SMALL, atom_table=table, text_dim=reference.TEXT_DIM).train()
    twin.load_state_dict(model.state_dict())
    return model, twin


def _train(batch: Batch, model, optimizer, steps: int, seed: int = 0) -> list[float]:
    losses = []
    for step in range(steps):
        torch.manual_seed(seed + step)  # the same dropout masks in both runs
        loss = reference.loss_of(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _seen_by_loss(name: str, value: torch.Tensor) -> torch.Tensor:
    """The part of a parameter the loss depends on: biases right in front of a BatchNorm cancel in it.

    Their true gradient is zero, so Adam turns the rounding noise of their computed gradient into
    steps of size lr that differ between any two implementations (``layer.0`` of an MLPLayer; the
    U block of an EGGC's ``node_linear`` and, up to the 1e-6 of the gate denominator, its V block).
    """
    if name.endswith("layer.0.bias"):
        return value[:0]
    if name.endswith("node_linear.bias"):
        blocks = value.view(4, -1)  # [A | V | B | U]
        return blocks[0::2]
    return value


def _assert_same_params(model, twin, tol: float = 1e-5) -> None:
    with torch.no_grad():
        for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
            assert torch.allclose(_seen_by_loss(name, p), _seen_by_loss(name, q), atol=tol, rtol=tol), name


def test_training_steps_equal_per_tensor_adamw(batch: Batch) -> None:
    """Four real training steps (gradients accumulated into the flat buffers) == per-tensor AdamW."""
    model, twin = _twins()
    flat = FlatAdamW(param_groups(model, 1e-2), lr=1e-3)
    loop = torch.optim.AdamW(param_groups(twin, 1e-2), lr=1e-3, foreach=False, fused=False)
    start = [p.detach().clone() for p in model.parameters()]
    losses = _train(batch, model, flat, 4)
    assert losses == pytest.approx(_train(batch, twin, loop, 4), rel=1e-5)
    _assert_same_params(model, twin)
    assert max(float((p - p0).abs().max()) for p, p0 in zip(model.parameters(), start, strict=True)) > 1e-3
    views = {p.data_ptr() for g in flat.flat_groups for p in g.params}
    assert len(views) == len(list(model.parameters()))  # every parameter is its own view into a buffer
    assert all(ptr % 64 == 0 for ptr in views)  # aligned like a freshly allocated tensor


def test_optimizer_step_is_a_handful_of_ops(batch: Batch) -> None:
    """All aten events of one step (nested included) stay at most 50, against one loop per tensor."""
    model, _ = _twins()
    flat = FlatAdamW(param_groups(model, 1e-5), lr=1e-3)
    _train(batch, model, flat, 1)
    reference.loss_of(model, batch).backward()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        flat.step()
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    assert 0 < len(events) <= 50, len(events)


def test_resume_from_flat_and_per_tensor_state_dicts(batch: Batch) -> None:
    """A FlatAdamW loaded from its own state dict, or from a per-tensor AdamW's, continues identically."""
    model, twin = _twins()
    loop = torch.optim.AdamW(param_groups(twin, 1e-2), lr=1e-3, foreach=False, fused=False)
    _train(batch, twin, loop, 2)
    model.load_state_dict(twin.state_dict())
    flat = FlatAdamW(param_groups(model, 1e-2), lr=1e-3)
    flat.load_state_dict(copy.deepcopy(loop.state_dict()))  # the per-tensor layout of an older checkpoint
    _train(batch, model, flat, 2, seed=2)
    _train(batch, twin, loop, 2, seed=2)
    _assert_same_params(model, twin)

    restored, _ = _twins()
    restored.load_state_dict(model.state_dict())
    again = FlatAdamW(param_groups(restored, 1e-2), lr=1e-3)
    again.load_state_dict(copy.deepcopy(flat.state_dict()))  # as read from a checkpoint
    assert _train(batch, restored, again, 2, seed=4) == _train(batch, model, flat, 2, seed=4)
    _assert_same_params(restored, model, tol=0.0)


def test_moved_model_and_replaced_gradients_are_followed(batch: Batch) -> None:
    """``model.double()`` and ``model.zero_grad()`` after building: steps still match per-tensor AdamW."""
    model, twin = _twins()
    flat = FlatAdamW(param_groups(model, 1e-2), lr=1e-3)
    model.double()
    twin.double()
    loop = torch.optim.AdamW(param_groups(twin, 1e-2), lr=1e-3, foreach=False, fused=False)
    double_batch = batch.clone()
    double_batch.edge_vec, double_batch.y = batch.edge_vec.double(), batch.y.double()
    double_batch.text_emb = batch.text_emb.double()
    for step in range(2):
        for net, opt in ((model, flat), (twin, loop)):
            torch.manual_seed(step)
            net.zero_grad()  # set_to_none: autograd then allocates fresh gradients outside the buffer
            reference.loss_of(net, double_batch).backward()
            opt.step()
    assert flat.flat_groups[0].flat.dtype == torch.float64
    _assert_same_params(model, twin, tol=1e-9)
