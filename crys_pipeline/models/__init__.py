"""Models: torch nn.Modules only (no files, no pymatgen); tensors in, tensors out (docs/method.md §4).

Public API: ``build_model`` (a variant of ``crys_pipeline.variants.VARIANTS`` by name, with the model's
hyperparameters ``crys_pipeline.settings.ModelSettings``), ``build_from_config`` (the model a model.json
`config` describes),
``register_encoder`` / ``ENCODERS`` (graph-encoder registry) and ``encoder_settings`` (an encoder's
hyper-parameters and project choices). The optimiser's parameter groups belong to training
(``crys_pipeline.train.optim``).
"""

from crys_pipeline.models.registry import (
    ENCODERS,
    build_from_config,
    build_model,
    encoder_settings,
    register_encoder,
)

__all__ = [
    "ENCODERS",
    "build_from_config",
    "build_model",
    "encoder_settings",
    "register_encoder",
]
