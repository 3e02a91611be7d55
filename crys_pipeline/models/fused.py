"""Fused kernels of the edge-gated graph convolution and the Linear-BatchNorm-SiLU block.

The reference EGGC runs five separate Linear layers, three gathers, two scatters, two BatchNorms
and two SiLUs per call, each with its own autograd node: about 250 aten operations per call
(forward + backward), most of them on small tensors, and its gathers are advanced indexing (``x[idx]``,
several times slower on the CPU than ``index_select``, and scattered back with ``index_put_``). Here one
call is one ``autograd.Function`` whose forward and hand-written backward use a few large operations:

- the four node-side maps (A = src_gate, V = dst_update, B = dst_gate, U = src_update) are one
  ``addmm`` into [N, 4H]; viewed as [4N, H], the gate's A h_s + B h_t is one ``embedding_bag`` (bags of
  the rows ``4 src`` and ``4 dst + 2``, summed in the reference's order) and V h_s one ``index_select``
  of the rows ``4 src + 1``, with index tensors built once per graph (``EdgePlan``);
- BatchNorm is ``native_batch_norm`` (running statistics updated exactly as ``nn.BatchNorm1d``);
- the backward pass scatters each node-side gradient block with one ``index_add_`` into the [4N, H]
  view and forms weight and input gradients with one ``mm`` / ``addmm`` each; no autograd graph of
  its own;
- an [E, H] buffer whose value is dead is written again (the edge projection becomes sigma, the
  messages become the edge output, the SiLU gradient becomes a gathered term): on the CPU every fresh
  block of that size costs page faults (see ``devices.keep_cpu_memory``).

Gathers and scatters stay [E, H]-sized on purpose: concatenating them ([3E, H], [E, 2H]) saves a few
dispatches, but on the CPU such tensors exceed glibc's mmap threshold at width 64 and are mapped and
page-faulted anew at every step, which measured slower.

The arithmetic is that of the reference (same loss and gradients to float32 rounding). The math runs
in the parameters' dtype with autocast disabled, so under CUDA bf16 autocast the fused kernels stay
in float32 (their cost is dispatch, not arithmetic).

With ``use_compiled`` (config ``train.compile``) the same math written as plain ops (``eggc_math``,
``mlp_math`` for the Linear-BatchNorm-SiLU embedding blocks) runs through ``torch.compile`` with
dynamic shapes: inductor generates fused kernels for the forward and for the backward that autograd
derives, after a one-off compile per process.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

#: Denominator guard of the normalised gated aggregation (docs/method.md §4.2 step 3).
GATE_EPS = 1e-6


class EdgePlan(NamedTuple):
    """Index tensors of one graph, built once per forward and shared by every layer on that graph.

    Attributes:
        dst: LongTensor [E] target node of each edge.
        rows: (``4 src``, ``4 src + 1``, ``4 dst + 2``, ``4 n + 3``): LongTensors [E], [E], [E], [N], the
            rows of the [4N, H] view of the node projection holding A h at the source, V h at the
            source, B h at the target, and U h of every node.
        pairs: LongTensor [2E] (``4 src``, ``4 dst + 2``) interleaved per edge, and ``offsets`` = 0, 2, 4, ...
            [E]: the bags of ``embedding_bag``, which sums A h_s + B h_t of every edge in one pass.
    """

    dst: torch.Tensor
    rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    pairs: torch.Tensor
    offsets: torch.Tensor


def edge_plan(edge_index: torch.Tensor, num_nodes: int) -> EdgePlan:
    """The ``EdgePlan`` of a graph with ``num_nodes`` nodes and directed edges ``edge_index`` [2, E]."""
    src4, dst4 = 4 * edge_index  # rows of A h / B h of each edge's source / target, minus their block offset
    b_rows = dst4 + 2
    pairs = torch.stack([src4, b_rows], 1).view(-1)  # [2E]: 4 src, 4 dst + 2 of edge 0, of edge 1, ...
    offsets = torch.arange(0, pairs.shape[0], 2, device=edge_index.device)
    u_rows = torch.arange(3, 4 * num_nodes, 4, device=edge_index.device)
    return EdgePlan(edge_index[1], (src4, src4 + 1, b_rows, u_rows), pairs, offsets)


def _check_batch(x: torch.Tensor, training: bool) -> None:
    if training and x.shape[0] <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")


def _norm_args(norm: nn.BatchNorm1d) -> tuple:
    """(weight, bias, running_mean, running_var) of a BatchNorm, in ``native_batch_norm`` order."""
    return norm.weight, norm.bias, norm.running_mean, norm.running_var


def _count_batch(norm: nn.BatchNorm1d) -> None:
    """``nn.BatchNorm1d``'s own bookkeeping of a training forward."""
    if norm.training and norm.track_running_stats:
        norm.num_batches_tracked.add_(1)


class _EGGCFunction(torch.autograd.Function):
    """Forward and backward of one EGGC call (see the module docstring)."""

    @staticmethod
    def forward(ctx, h, e, a_rows, v_rows, b_rows, u_rows, pairs, offsets, dst, node_w, node_b, edge_w, edge_b,
                wn, bn, rmn, rvn, we, be, rme, rve, training: bool, momentum: float, eps: float):
        n, width = h.shape
        proj = torch.addmm(node_b, h, node_w.t())  # [N, 4H] = [A h | V h | B h | U h]
        rows = proj.view(4 * n, width)
        # Gathers and scatters of [E, H] each, no [3E, H] / [E, 2H] concatenations: on the CPU a tensor
        # over glibc's mmap threshold (32 MB; [E, 2H] at width 64 on a 64-crystal line graph) is mapped
        # and page-faulted anew at every step, which costs more than the dispatch it saves.
        v_src = rows.index_select(0, v_rows)  # [E, H]
        # g = (A h_s + B h_t) + C e, summed in the reference's order; the gather-add is one embedding_bag
        edge_c = torch.addmm(edge_b, e, edge_w.t())
        gate = torch.embedding_bag(rows, pairs, offsets, False, 0)[0].add_(edge_c)
        # [E, H] buffers are reused where a value dies: every fresh one costs page faults on the CPU
        sigma = torch.sigmoid(gate, out=edge_c)
        messages = torch.mul(sigma, v_src)
        like = {"dtype": h.dtype, "device": h.device}
        num = torch.zeros(n, width, **like).index_add_(0, dst, messages)  # [E, H] -> [N, H]
        inv = torch.full((n, width), GATE_EPS, **like).index_add_(0, dst, sigma).reciprocal_()  # 1 / (eps + sum)
        mean_msg = num.mul_(inv)  # [N, H]
        x = proj[:, 3 * width:] + mean_msg
        xn, mean_n, invstd_n = torch.native_batch_norm(x, wn, bn, rmn, rvn, training, momentum, eps)
        gn, mean_e, invstd_e = torch.native_batch_norm(gate, we, be, rme, rve, training, momentum, eps)
        ctx.save_for_backward(h, e, a_rows, v_rows, b_rows, u_rows, dst, node_w, edge_w, wn, rmn, rvn, we, rme, rve,
                              v_src, sigma, inv, mean_msg, x, xn, mean_n, invstd_n, gate, gn, mean_e, invstd_e)
        ctx.flags = (training, eps)
        ctx.set_materialize_grads(False)  # an unused edge output (the last layer's) skips its BatchNorm backward
        # h + SiLU(.), e + SiLU(.) without one more temporary (the edge one in the dead messages' buffer)
        return F.silu(xn).add_(h), torch.ops.aten.silu.out(gn, out=messages).add_(e)

    @staticmethod
    def backward(ctx, dh_out, de_out):
        (h, e, a_rows, v_rows, b_rows, u_rows, dst, node_w, edge_w, wn, rmn, rvn, we, rme, rve, v_src, sigma, inv,
         mean_msg, x, xn, mean_n, invstd_n, gate, gn, mean_e, invstd_e) = ctx.saved_tensors
        training, eps = ctx.flags
        aten = torch.ops.aten
        dh_out = torch.zeros_like(h) if dh_out is None else dh_out
        dx, dwn, dbn = aten.native_batch_norm_backward(
            aten.silu_backward(dh_out, xn), x, wn, rmn, rvn, mean_n, invstd_n, training, eps, [True] * 3)
        if de_out is None:
            dgate, dwe, dbe, spare = torch.zeros_like(gate), None, None, None
        else:
            spare = aten.silu_backward(de_out, gn)  # [E, H], dead after the BatchNorm backward: reused below
            dgate, dwe, dbe = aten.native_batch_norm_backward(
                spare, gate, we, rme, rve, mean_e, invstd_e, training, eps, [True] * 3)
        dnum = dx * inv  # d loss / d num; d loss / d den = -dnum * mean_msg
        dm = dnum.index_select(0, dst)  # [E, H]
        dv = dm * sigma  # d loss / d (V h_s)
        dsigma = dm.mul_(v_src).sub_(torch.index_select(dnum * mean_msg, 0, dst, out=spare))
        dgate += aten.sigmoid_backward.grad_input(dsigma, sigma, grad_input=dsigma)
        dproj = torch.zeros(h.shape[0], 4 * h.shape[1], dtype=h.dtype, device=h.device)  # [N, 4H]
        drows = dproj.view(-1, h.shape[1])  # [4N, H]
        for idx, grad in ((a_rows, dgate), (v_rows, dv), (b_rows, dgate), (u_rows, dx)):
            drows.index_add_(0, idx, grad)
        dh = torch.addmm(dh_out, dproj, node_w)
        de = torch.mm(dgate, edge_w) if de_out is None else torch.addmm(de_out, dgate, edge_w)
        return (dh, de, *[None] * 7, torch.mm(dproj.t(), h), dproj.sum(0), torch.mm(dgate.t(), e),
                dgate.sum(0), dwn, dbn, None, None, dwe, dbe, None, None, None, None, None)


def eggc_math(h, e, pairs, v_rows, dst, node_w, node_b, edge_w, edge_b, wn, bn, rmn, rvn, we, be, rme, rve,
              training: bool, momentum: float, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward of ``_EGGCFunction`` as plain differentiable ops (``EdgePlan.pairs`` and V's rows).

    What ``torch.compile`` fuses (``use_compiled``): inductor generates the kernels of this forward and
    of the backward that autograd derives from it, so neither the hand-written backward nor the
    per-op dispatch remains.
    """
    n, width = h.shape
    rows = torch.addmm(node_b, h, node_w.t()).view(4 * n, width)  # [4N, H]: A h, V h, B h, U h of node 0, ...
    ab = rows[pairs].view(-1, 2, width)  # A h_s, B h_t of each edge
    gate = (ab[:, 0] + ab[:, 1]) + torch.addmm(edge_b, e, edge_w.t())
    sigma = torch.sigmoid(gate)
    agg = h.new_zeros(n, 2 * width).index_add(0, dst, torch.cat([sigma * rows[v_rows], sigma], 1))
    proj = rows.view(n, 4 * width)
    x = proj[:, 3 * width:] + agg[:, :width] / (agg[:, width:] + GATE_EPS)
    xn = F.batch_norm(x, rmn, rvn, wn, bn, training, momentum, eps)
    gn = F.batch_norm(gate, rme, rve, we, be, training, momentum, eps)
    return h + F.silu(xn), e + F.silu(gn)


def mlp_math(x, weight, bias, wn, bn, rm, rv, training: bool, momentum: float, eps: float) -> torch.Tensor:
    """SiLU(BatchNorm(Linear(x))) as plain differentiable ops (``layers.MLPLayer``'s math)."""
    return F.silu(F.batch_norm(torch.addmm(bias, x, weight.t()), rm, rv, wn, bn, training, momentum, eps))


_COMPILED: dict[str, object] = {}


def _compiled(fn):
    """``torch.compile(fn, dynamic=True)``, built once per process (shapes vary per batch)."""
    if fn.__name__ not in _COMPILED:
        _COMPILED[fn.__name__] = torch.compile(fn, dynamic=True)
    return _COMPILED[fn.__name__]


def mlp_block(x: torch.Tensor, linear: nn.Linear, norm: nn.BatchNorm1d) -> torch.Tensor:
    """``mlp_math`` through ``torch.compile`` with a layer's parameters (float32, autocast off).

    Args:
        x: [M, a].
        linear: Linear(a, b).
        norm: BatchNorm1d(b).

    Returns:
        [M, b].
    """
    _check_batch(x, norm.training)
    _count_batch(norm)
    with torch.autocast(x.device.type, enabled=False):
        return _compiled(mlp_math)(x.to(linear.weight.dtype), linear.weight, linear.bias, *_norm_args(norm),
                                   norm.training, norm.momentum, norm.eps)


def eggc(h: torch.Tensor, *, e: torch.Tensor, plan: EdgePlan, node_linear: nn.Linear, edge_gate: nn.Linear,
         bn_nodes: nn.BatchNorm1d, bn_edges: nn.BatchNorm1d,
         compiled: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One fused EGGC step (the math of ``EdgeGatedGraphConv``).

    Args:
        h: node features [N, H].
        e: edge features [E, H].
        plan: ``edge_plan`` of the graph.
        node_linear: Linear(H, 4H), output blocks [src_gate | dst_update | dst_gate | src_update].
        edge_gate: Linear(H, H).
        bn_nodes: BatchNorm1d(H) of the nodes (momentum and eps honoured).
        bn_edges: BatchNorm1d(H) of the edges (momentum and eps honoured).
        compiled: run ``torch.compile``'s kernels of ``eggc_math`` instead of ``_EGGCFunction``.

    Returns:
        (h' [N, H], e' [E, H]).
    """
    training = bn_nodes.training
    _check_batch(h, training)
    _check_batch(e, training)
    _count_batch(bn_nodes)
    _count_batch(bn_edges)
    dtype = node_linear.weight.dtype
    if h.dtype != dtype or e.dtype != dtype:  # activations from a bf16 autocast region
        h, e = h.to(dtype), e.to(dtype)
    params = (node_linear.weight, node_linear.bias, edge_gate.weight, edge_gate.bias, *_norm_args(bn_nodes),
              *_norm_args(bn_edges), training, bn_nodes.momentum, bn_nodes.eps)
    with torch.autocast(h.device.type, enabled=False):
        if compiled:
            return _compiled(eggc_math)(h, e, plan.pairs, plan.rows[1], plan.dst, *params)
        return _EGGCFunction.apply(h, e, *plan.rows, plan.pairs, plan.offsets, plan.dst, *params)


def use_compiled(model: nn.Module, enabled: bool = True) -> int:
    """Switch every fused EGGC (and Linear-BatchNorm-SiLU block) of ``model`` to or from ``torch.compile``.

    Returns:
        the number of layers switched. Weights, state_dict and numerics (to float32 rounding) are unchanged.
    """
    layers = [m for m in model.modules() if hasattr(m, "compiled")]
    for layer in layers:
        layer.compiled = enabled
    return len(layers)
