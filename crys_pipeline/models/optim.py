"""AdamW parameter groups with the reference's no-decay rule (docs/method.md §6).

Reference rule ("name"): no weight decay for parameters whose *name* contains "bias", "bn" or "norm".
It misses the BatchNorms inside the embedding MLPs (named ``...layer.1.weight``), so those are decayed;
reproduced by default. ``decay_filter="type"`` instead exempts every bias and every parameter of a
normalisation layer (BatchNorm*, LayerNorm, GroupNorm, InstanceNorm).
"""

from __future__ import annotations

from typing import Any

from torch import nn

DECAY_FILTERS = ("name", "type")
_NO_DECAY_WORDS = ("bias", "bn", "norm")
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


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
