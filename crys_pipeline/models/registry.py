"""Model variants by name and the graph-encoder registry (docs/method.md §4.5, §7.3-7.5).

``build_model`` assembles the ``PropertyModel`` of a variant of ``crys_pipeline.variants.VARIANTS`` (which
graph encoder and which cached text embedding it uses) with the model's hyperparameters, one
``crys_pipeline.settings.ModelSettings`` taken whole: the encoder factory and the heads read what they need
from it, and the model's ``config`` (model.json) stores it. Graph encoders (ALIGNN, CGCNN, MEGNet, GATGNN)
plug in with ``register_encoder`` behind the same interface: a factory ``(atom_table, settings)`` returning a
module with ``out_features`` whose ``forward(batch)`` gives pooled crystal vectors [B, out_features].

Heads (documented choices):
- graph + text, head "code" (reference): PH_G(z_G) ; PH_768(c) -> Lin(128, 64) -> ReLU -> Lin(64, 1).
- graph + text, head "paper": z_G = pooled vector as is ; Lin(768, 128)-ReLU-Lin(128, 64) -> MLP(G + 64).
- text only (CrysTextNet, A1): PH_768 (or the paper projection) -> Lin(64, 64) -> ReLU -> Lin(64, 1).
- text inside the graph (crysmmnet_film, crysmmnet_xattn*, docs/method.md §11): the ALIGNN encoder wrapped by
  ``fusion.FiLMALIGNN`` or ``fusion.CrossAttentionALIGNN``, then the code/paper head of graph + text.
- graph only (alignn, cgcnn, megnet, gatgnn): the original model's own head, one Linear(G, 1) on the
  pooled vector (ALIGNN's ``fc``; CGCNN's ``fc_out`` after ``conv_to_fc``; MEGNet's output Dense after
  its Dense(32)-Dense(16); GATGNN's ``out`` after its two extra layers), so the baselines are the published
  architectures (ALIGNN 256/4/4 = 4,026,753 parameters). ``head`` does not change them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from crys_pipeline.models.alignn import ALIGNNEncoder
from crys_pipeline.models.cgcnn import CGCNNEncoder
from crys_pipeline.models.crysmmnet import PropertyModel, TargetScale
from crys_pipeline.models.fusion import CrossAttentionALIGNN, FiLMALIGNN
from crys_pipeline.models.gatgnn import GATGNNEncoder
from crys_pipeline.models.layers import FusionMLP, PaperTextProjection, ProjectionHead
from crys_pipeline.models.megnet import MEGNetEncoder
from crys_pipeline.settings import ModelSettings, make
from crys_pipeline.variants import Variant
from crys_pipeline.variants import variant as lookup_variant

#: Width of the graph and text projections and of the fusion MLP's hidden layer.
PROJECTION_DIM = 64
#: The target scaling `none`: the head predicts the target's unit directly (the released code's recipe).
NO_SCALING = {"method": "none", "shift": 0.0, "scale": 1.0}
#: The paper's model (the defaults of ``ModelSettings``, declared once in crys_pipeline.settings).
PAPER = ModelSettings()
#: Keys of a model's ``config`` besides its ``ModelSettings``: what it was built for and its fitted scaling.
CONFIG_KEYS = ("variant", "text_dim", "target_scaling")

EncoderFactory = Callable[[torch.Tensor | None, ModelSettings], nn.Module]


def _alignn_encoder(atom_table: torch.Tensor | None, settings: ModelSettings) -> nn.Module:
    return ALIGNNEncoder(atom_table, settings.hidden_features, settings.alignn_layers, settings.gcn_layers,
                         readout=settings.readout)


def _cgcnn_encoder(atom_table: torch.Tensor | None, settings: ModelSettings) -> nn.Module:
    """CGCNN with its original defaults; the ALIGNN width/depth settings do not apply."""
    return CGCNNEncoder(atom_table, readout=settings.readout)


def _paper_defaults(encoder: Callable[[torch.Tensor | None], nn.Module]) -> EncoderFactory:
    """A factory for an encoder built with its own paper's defaults.

    MEGNet: Set2Set readouts; GATGNN: global attention pooling. The ALIGNN width/depth/readout settings
    do not apply.
    """

    def factory(atom_table: torch.Tensor | None, _settings: ModelSettings) -> nn.Module:
        return encoder(atom_table)

    return factory


ENCODERS: dict[str, EncoderFactory] = {
    "alignn": _alignn_encoder,
    "cgcnn": _cgcnn_encoder,
    "megnet": _paper_defaults(MEGNetEncoder),
    "gatgnn": _paper_defaults(GATGNNEncoder),
}


def register_encoder(name: str, factory: EncoderFactory) -> None:
    """Add a graph encoder ``factory(atom_table, settings)``; its hyperparameters are ``ModelSettings`` fields."""
    if name in ENCODERS:
        raise ValueError(f"graph encoder {name!r} is already registered")
    ENCODERS[name] = factory


def encoder_settings(model: PropertyModel) -> dict[str, Any] | None:
    """The graph encoder's hyper-parameters and which are this project's choice (for model.json).

    None for text-only models and for encoders whose settings are all in ``model.config`` (ALIGNN, CGCNN).
    """
    settings = getattr(model.graph_encoder, "settings", None)
    return settings() if callable(settings) else None


def _text_projection(head: str, text_dim: int) -> nn.Module:
    if head == "code":
        return ProjectionHead(text_dim, PROJECTION_DIM)
    return PaperTextProjection(text_dim, projection_dim=PROJECTION_DIM)


def _with_text(spec: Variant, encoder: nn.Module, settings: ModelSettings, text_dim: int) -> nn.Module:
    """The ALIGNN encoder with the text inside it (docs/method.md §11), or as it is for `concat`."""
    if spec.fusion == "film":
        return FiLMALIGNN(encoder, text_dim)
    if spec.fusion == "cross_attention":
        return CrossAttentionALIGNN(encoder, text_dim, settings.fusion_heads)
    return encoder


def _heads(spec: Variant, settings: ModelSettings, encoder: nn.Module | None,
           text_dim: int) -> tuple[nn.Module | None, nn.Module | None, nn.Module]:
    """(graph projection, text projection, head) that join the variant's inputs, built in this order (seeded init)."""
    if encoder is None:
        return None, _text_projection(settings.head, text_dim), FusionMLP(PROJECTION_DIM)
    width = encoder.out_features
    if spec.text_view is None:
        return nn.Identity(), None, nn.Linear(width, 1)
    if settings.head == "code":
        graph_proj: nn.Module = ProjectionHead(width, PROJECTION_DIM)
        fused = 2 * PROJECTION_DIM
    else:
        graph_proj = nn.Identity()
        fused = width + PROJECTION_DIM
    return graph_proj, _text_projection(settings.head, text_dim), FusionMLP(fused)


def build_model(
    variant: str,
    settings: ModelSettings = PAPER,
    *,
    atom_table: torch.Tensor | None,
    text_dim: int = 768,
    target_scaling: dict[str, Any] | None = None,
) -> PropertyModel:
    """Build a model variant by name with the model's hyperparameters.

    Args:
        variant: a key of ``crys_pipeline.variants.VARIANTS``.
        settings: the model's hyperparameters (width, depth, head, readout, ...); default the paper's model.
        atom_table: float [104, 92] CGCNN atom table (``atom_features.cgcnn_feature_table()``), stored as a
            buffer; None registers zeros (when a state_dict will be loaded). Ignored by text-only variants.
        text_dim: width of the cached text embedding (768 for MatSciBERT).
        target_scaling: {"method", "shift", "scale"} of the target scaling (``TargetScale``); None = `none`.

    Returns:
        A ``PropertyModel`` whose ``.config`` (variant, text_dim, every field of `settings` and the target
        scaling: model.json's `config`) rebuilds it through ``build_from_config``.
    """
    spec = lookup_variant(variant)
    scaling = dict(target_scaling or NO_SCALING)
    config = {"variant": variant, "text_dim": text_dim, **asdict(settings), "target_scaling": scaling}
    encoder = None
    if spec.graph_encoder is not None:
        encoder = _with_text(spec, ENCODERS[spec.graph_encoder](atom_table, settings), settings, text_dim)
    return PropertyModel(config, encoder, *_heads(spec, settings, encoder, text_dim),
                         TargetScale(scaling["shift"], scaling["scale"]))


def build_from_config(config: dict[str, Any], *, atom_table: torch.Tensor | None) -> PropertyModel:
    """The model a ``PropertyModel.config`` (model.json's `config`) describes.

    A setting the config lacks (a model.json written before the setting existed) takes its default; an unknown
    key is a ValueError naming it. A config without `target_scaling` builds the identity scaling (a reader
    checks it against the weights: ``predict.check_target_scale``).
    """
    settings = make(ModelSettings, {k: v for k, v in config.items() if k not in CONFIG_KEYS})
    return build_model(config["variant"], settings, atom_table=atom_table, text_dim=config["text_dim"],
                       target_scaling=config.get("target_scaling"))
