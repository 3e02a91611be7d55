"""Models: torch nn.Modules only (no files, no pymatgen); tensors in, tensors out (docs/method.md §4).

Public API: ``build_model`` (a variant of ``crys_pipeline.variants.VARIANTS`` by name),
``register_encoder`` / ``ENCODERS`` (graph-encoder registry), ``encoder_settings`` (an encoder's
hyper-parameters and project choices) and ``param_groups`` (AdamW groups with the reference's no-decay rule).
"""

from crys_pipeline.models.optim import decay_split, param_groups
from crys_pipeline.models.registry import (
    ENCODERS,
    build_model,
    encoder_settings,
    register_encoder,
)

__all__ = [
    "ENCODERS",
    "build_model",
    "decay_split",
    "encoder_settings",
    "param_groups",
    "register_encoder",
]
