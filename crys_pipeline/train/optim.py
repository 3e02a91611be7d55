"""The optimiser and schedule of training: AdamW parameter groups, AdamW on flat buffers, the one-cycle schedule.

``make_optimizer`` and ``make_scheduler`` are the reference recipe (docs/method.md §6): AdamW over
``param_groups`` and OneCycleLR stepped every iteration.

Parameter groups. Reference rule ("name"): no weight decay for parameters whose *name* contains "bias",
"bn" or "norm". It misses the BatchNorms inside the embedding MLPs (named ``...layer.1.weight``), so those
are decayed; reproduced by default. ``decay_filter="type"`` instead exempts every bias and every parameter
of a normalisation layer (BatchNorm*, LayerNorm, GroupNorm, InstanceNorm).

AdamW over flat parameter storage: one contiguous buffer per parameter group, a handful of ops per step.
``FlatAdamW`` moves the parameters of each group into one contiguous buffer (each parameter's
``.data`` becomes a view into it) and gives each parameter a ``.grad`` view into one contiguous
gradient buffer per group. Autograd accumulates into those views in place, and the update is
PyTorch's AdamW (the fused kernel where the device has one, else the multi-tensor one) on two flat
tensors: the per-element math of ``torch.optim.AdamW`` (bias correction, decoupled weight decay),
without a loop over the model's ~130 parameter tensors (crysmmnet).

Differences from ``torch.optim.AdamW`` on the same groups, none of which changes a used parameter:

- ``zero_grad`` zeroes the gradient buffers in place (``set_to_none=False`` semantics whatever is
  passed), so a parameter that receives no gradient in a step is updated with a zero gradient: no
  change for an undecayed parameter (zero moments give a zero step), a decoupled weight decay for a
  decayed one; its value never reaches the loss either way.
- One step count per group rather than per tensor (identical for parameters used at every step).

The state dict holds one ``exp_avg`` / ``exp_avg_sq`` per group; ``load_state_dict`` also accepts a
per-tensor ``torch.optim.AdamW`` state dict of the same groups (an older checkpoint). If the model is
moved (``model.to``) or its gradients are replaced (``model.zero_grad()``, assigning ``.grad``) after
the optimizer was built, the next ``step`` rebuilds the buffers from the parameters (and their
gradients), so the result is that of an optimizer built afterwards. Replaced ``Parameter`` objects
(``load_state_dict(assign=True)``, ``overwrite_module_params_on_conversion``) are not followed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

DECAY_FILTERS = ("name", "type")
_NO_DECAY_WORDS = ("bias", "bn", "norm")
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)

#: Parameters start at multiples of this many elements in their buffer (64-byte aligned float32 views).
ALIGN = 16


class _FlatGroup:
    """The parameters of one group, their views into a flat buffer and their gradients' views."""

    def __init__(self, params: list[torch.nn.Parameter]) -> None:
        self.params = params
        self.flat = torch.empty(0)
        self.offsets: list[int] = []
        self.views: list[torch.Tensor] = []
        self.grad_views: list[torch.Tensor] = []
        self.build()

    def build(self) -> None:
        """(Re)create the flat buffers from the parameters' current values, devices and gradients."""
        if len({(p.dtype, p.device) for p in self.params}) > 1:
            raise ValueError("a flat parameter group needs one dtype and device for all its parameters")
        self.offsets = [0]
        for param in self.params:  # every parameter starts at a multiple of ALIGN elements (aligned views)
            self.offsets.append(self.offsets[-1] + -(-param.numel() // ALIGN) * ALIGN)
        like = {"dtype": self.params[0].dtype, "device": self.params[0].device}
        self.flat = torch.zeros(self.offsets[-1], **like)  # [P], padding stays zero
        self.flat.grad = torch.zeros(self.offsets[-1], **like)
        # offsets holds one entry more than params (the buffer's end): these zips stop at the last parameter
        self.views = [self.flat[o:o + p.numel()].view_as(p) for o, p in zip(self.offsets, self.params, strict=False)]
        self.grad_views = [self.flat.grad[o:o + p.numel()].view_as(p)
                           for o, p in zip(self.offsets, self.params, strict=False)]
        with torch.no_grad():
            for param, view, grad_view in zip(self.params, self.views, self.grad_views, strict=True):
                view.copy_(param)
                if param.grad is not None:
                    grad_view.copy_(param.grad)
                param.data = view
                param.grad = grad_view

    def scatter(self, tensors: list[torch.Tensor | None]) -> torch.Tensor:
        """One tensor per parameter (None: zeros) laid out like the flat buffer (on the tensors' device)."""
        out = torch.zeros(self.offsets[-1], dtype=self.flat.dtype)
        for offset, param, tensor in zip(self.offsets, self.params, tensors, strict=False):
            if tensor is not None:
                out[offset:offset + param.numel()] = tensor.reshape(-1).to(out)
        return out

    def moved(self) -> bool:
        """Whether a parameter no longer lives in the buffer (``model.to``, ``param.data = ...``)."""
        return any(p.data_ptr() != v.data_ptr() or p.shape != v.shape
                   for p, v in zip(self.params, self.views, strict=True))

    def gather_grads(self) -> None:
        """Copy gradients that autograd or the caller put outside the buffer back into it."""
        for param, view in zip(self.params, self.grad_views, strict=True):
            if param.grad is not view:
                if param.grad is None:
                    view.zero_()
                else:
                    view.copy_(param.grad)
                param.grad = view


class FlatAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` on one flat buffer per parameter group (see the module docstring).

    Args:
        groups: parameter groups as for ``torch.optim.AdamW`` (``{"params": [...], "weight_decay": ...}``);
            the parameters of a group must share dtype and device.
        lr: learning rate (schedulers change ``param_groups[i]["lr"]`` and ``["betas"]`` as usual).
        **kwargs: other ``torch.optim.AdamW`` arguments (betas, eps, ...), except fused / foreach.
    """

    def __init__(self, groups: Iterable[dict[str, Any]], lr: float, **kwargs: Any) -> None:
        groups = [dict(g) for g in groups]
        self.flat_groups = [_FlatGroup(list(g["params"])) if g["params"] else None for g in groups]
        flat = [{**g, "params": [] if fg is None else [fg.flat]}
                for g, fg in zip(groups, self.flat_groups, strict=True)]
        try:
            super().__init__(flat, lr=lr, fused=True, **kwargs)
        except RuntimeError as exc:  # a device without a fused AdamW kernel
            log.info("fused AdamW unavailable (%s): using the multi-tensor implementation", exc)
            super().__init__(flat, lr=lr, foreach=True, **kwargs)

    def model_params(self, index: int) -> list[torch.nn.Parameter]:
        """The model's parameters held by ``param_groups[index]``, in buffer order."""
        group = self.flat_groups[index]
        return [] if group is None else list(group.params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero every gradient buffer in place (one op per group; ``set_to_none`` is ignored)."""
        for group in self.flat_groups:
            if group is not None:
                group.gather_grads()
                group.flat.grad.zero_()

    def _sync(self) -> None:
        """Rebuild moved buffers (moving their optimizer state along) and gather stray gradients."""
        for index, group in enumerate(self.flat_groups):
            if group is None:
                continue
            if group.moved():
                old = group.flat
                group.build()
                self.param_groups[index]["params"] = [group.flat]
                state = self.state.pop(old, {})
                self.state[group.flat] = {k: v.to(group.flat) if k != "step" else v.to(group.flat.device)
                                          for k, v in state.items()}
            group.gather_grads()

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """``torch.optim.AdamW.step`` on the flat buffers (rebuilt first if the model moved)."""
        self._sync()
        return super().step(closure)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a ``FlatAdamW`` state dict, or a per-tensor ``torch.optim.AdamW`` one of the same groups."""
        sizes = [len(g["params"]) for g in state_dict["param_groups"]]
        if sizes != [len(g["params"]) for g in self.param_groups]:
            state_dict = self._flatten_state(state_dict)
        super().load_state_dict(state_dict)

    def _flatten_state(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """A per-tensor AdamW state dict in this optimizer's flat layout (missing moments: zeros)."""
        groups, state = [], {}
        for index, (saved, group) in enumerate(zip(state_dict["param_groups"], self.flat_groups, strict=True)):
            params = [] if group is None else group.params
            if len(saved["params"]) != len(params):
                raise ValueError(f"optimizer group {index}: {len(saved['params'])} saved tensors, {len(params)} here")
            implementation = {k: self.param_groups[index][k] for k in ("fused", "foreach")}
            groups.append({**saved, **implementation, "params": [] if group is None else [len(state)]})
            if group is None:
                continue
            per_tensor = [state_dict["state"].get(i, {}) for i in saved["params"]]
            merged = {key: group.scatter([s.get(key) for s in per_tensor]) for key in ("exp_avg", "exp_avg_sq")}
            steps = [float(s["step"]) for s in per_tensor if "step" in s]
            merged["step"] = torch.tensor(max(steps, default=0.0))
            state[len(state)] = merged
        return {"state": state, "param_groups": groups}



def _exempt_by_type(model: nn.Module) -> set[str]:
    exempt = set()
    for module_name, module in model.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            if isinstance(module, _NORM_TYPES) or name == "bias":
                exempt.add(f"{module_name}.{name}" if module_name else name)
    return exempt


def decay_split(model: nn.Module, decay_filter: str = "name") -> tuple[list[str], list[str]]:
    """Names of the trainable parameters that are (decayed, not decayed).

    Args:
        model: any module.
        decay_filter: "name" (reference) or "type".
    """
    if decay_filter not in DECAY_FILTERS:
        raise ValueError(f"decay_filter must be one of {DECAY_FILTERS}, got {decay_filter!r}")
    exempt = _exempt_by_type(model) if decay_filter == "type" else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        skip = any(word in name for word in _NO_DECAY_WORDS) if decay_filter == "name" else name in exempt
        (no_decay if skip else decay).append(name)
    return decay, no_decay


def param_groups(
    model: nn.Module, weight_decay: float, decay_filter: str = "name"
) -> list[dict[str, Any]]:
    """AdamW parameter groups: [decayed (weight_decay), not decayed (0.0)].

    Args:
        model: the model to optimise (frozen parameters are left out).
        weight_decay: decay of the first group (reference 1e-5).
        decay_filter: "name" (reference rule) or "type".
    """
    params = dict(model.named_parameters())
    decay, no_decay = decay_split(model, decay_filter)
    return [
        {"params": [params[n] for n in decay], "weight_decay": weight_decay},
        {"params": [params[n] for n in no_decay], "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> FlatAdamW:
    """AdamW over the reference's parameter groups (bias / bn / norm names not decayed).

    ``FlatAdamW``: each group's parameters and gradients live in one flat buffer, and the update is
    the fused (else multi-tensor) AdamW kernel on those buffers: the same update to float32 rounding,
    a handful of ops per step. Build it after ``model.to(device)``.
    """
    return FlatAdamW(param_groups(model, weight_decay), lr=lr)


def make_scheduler(optimizer: torch.optim.Optimizer, max_lr: float, total_steps: int):
    """OneCycleLR of the reference: pct_start 0.3, cosine, div 25, final div 1e4, momentum cycling on."""
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=0.3, anneal_strategy="cos",
        div_factor=25.0, final_div_factor=1e4, cycle_momentum=True,
    )
