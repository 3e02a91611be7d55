"""Model variants by name and the graph-encoder registry (docs/method.md §4.5, §7.3-7.5).

``build_model`` assembles the ``PropertyModel`` of a variant of ``crys_pipeline.variants.VARIANTS`` (which
graph encoder and which cached text embedding it uses). Graph encoders (ALIGNN, CGCNN, MEGNet, GATGNN)
plug in with ``register_encoder`` behind the same interface: a factory returning a module with
``out_features`` whose ``forward(batch)`` gives pooled crystal vectors [B, out_features].

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
from crys_pipeline.settings import TrainSettings
from crys_pipeline.variants import Variant
from crys_pipeline.variants import variant as lookup_variant

#: Width of the graph and text projections and of the fusion MLP's hidden layer.
PROJECTION_DIM = 64
#: The target scaling `none`: the head predicts the target's unit directly (the released code's recipe).
NO_SCALING = {"method": "none", "shift": 0.0, "scale": 1.0}
#: The recipe's defaults (the paper's model), declared once in crys_pipeline.settings.
PAPER = TrainSettings()

EncoderFactory = Callable[..., nn.Module]


def _alignn_encoder(
    atom_table: torch.Tensor | None,
    *,
    hidden_features: int,
    alignn_layers: int,
    gcn_layers: int,
    readout: str,
) -> nn.Module:
    return ALIGNNEncoder(atom_table, hidden_features, alignn_layers, gcn_layers, readout=readout)


def _cgcnn_encoder(
    atom_table: torch.Tensor | None,
    *,
    hidden_features: int,
    alignn_layers: int,
    gcn_layers: int,
    readout: str,
) -> nn.Module:
    """CGCNN with its original defaults; the ALIGNN width/depth arguments do not apply."""
    return CGCNNEncoder(atom_table, readout=readout)


def _paper_defaults(encoder: Callable[[torch.Tensor | None], nn.Module]) -> EncoderFactory:
    """A factory for an encoder built with its own paper's defaults.

    MEGNet: Set2Set readouts; GATGNN: global attention pooling. The ALIGNN width/depth/readout arguments
    do not apply.
    """

    def factory(atom_table: torch.Tensor | None, **_alignn_args: object) -> nn.Module:
        return encoder(atom_table)

    return factory


ENCODERS: dict[str, EncoderFactory] = {
    "alignn": _alignn_encoder,
    "cgcnn": _cgcnn_encoder,
    "megnet": _paper_defaults(MEGNetEncoder),
    "gatgnn": _paper_defaults(GATGNNEncoder),
}


def register_encoder(name: str, factory: EncoderFactory) -> None:
    """Add a graph encoder ``factory(atom_table, *, hidden_features, alignn_layers, gcn_layers, readout)``."""
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


def _with_text(spec: Variant, encoder: nn.Module, text_dim: int, heads: int) -> nn.Module:
    """The ALIGNN encoder with the text inside it (docs/method.md §11), or as it is for `concat`."""
    if spec.fusion == "film":
        return FiLMALIGNN(encoder, text_dim)
    if spec.fusion == "cross_attention":
        return CrossAttentionALIGNN(encoder, text_dim, heads)
    return encoder


def _assemble(config: dict, spec: Variant, encoder: nn.Module | None) -> PropertyModel:
    head, text_dim = config["head"], config["text_dim"]
    scale = TargetScale(config["target_scaling"]["shift"], config["target_scaling"]["scale"])
    if encoder is None:
        return PropertyModel(config, None, None, _text_projection(head, text_dim), FusionMLP(PROJECTION_DIM), scale)
    width = encoder.out_features
    if spec.text_variant is None:
        return PropertyModel(config, encoder, nn.Identity(), None, nn.Linear(width, 1), scale)
    if head == "code":
        graph_proj: nn.Module = ProjectionHead(width, PROJECTION_DIM)
        fused = 2 * PROJECTION_DIM
    else:
        graph_proj = nn.Identity()
        fused = width + PROJECTION_DIM
    return PropertyModel(config, encoder, graph_proj, _text_projection(head, text_dim), FusionMLP(fused), scale)


def build_model(
    variant: str,
    *,
    atom_table: torch.Tensor | None,
    text_dim: int = 768,
    hidden_features: int = PAPER.hidden_features,
    alignn_layers: int = PAPER.alignn_layers,
    gcn_layers: int = PAPER.gcn_layers,
    head: str = PAPER.head,
    readout: str = "mean",
    target_scaling: dict[str, Any] | None = None,
    fusion_heads: int = PAPER.fusion_heads,
) -> PropertyModel:
    """Build a model variant by name.

    Args:
        variant: a key of ``crys_pipeline.variants.VARIANTS``.
        atom_table: float [104, 92] CGCNN atom table (``atom_features.cgcnn_feature_table()``), stored as a
            buffer; None registers zeros (when a state_dict will be loaded). Ignored by text-only variants.
        text_dim: width of the cached text embedding (768 for MatSciBERT).
        hidden_features: ALIGNN width H.
        alignn_layers: ALIGNN layers.
        gcn_layers: EGGC layers after them.
        head: "code" (released code, reference) or "paper" (the paper's equations), docs/method.md §4.5.
        readout: per-crystal pooling, "mean" (reference) or "sum" (paper Eq. 5).
        target_scaling: {"method", "shift", "scale"} of the target scaling (``TargetScale``); None = `none`.
        fusion_heads: attention heads of the cross-attention variants (their token states are `text_dim` wide).

    Returns:
        A ``PropertyModel`` whose ``.config`` (these arguments minus atom_table) rebuilds it.
    """
    TrainSettings(head=head)  # an unknown head raises, naming the choices
    spec = lookup_variant(variant)
    config = {
        "variant": variant,
        "text_dim": text_dim,
        "hidden_features": hidden_features,
        "alignn_layers": alignn_layers,
        "gcn_layers": gcn_layers,
        "head": head,
        "readout": readout,
        "target_scaling": dict(target_scaling or NO_SCALING),
        "fusion_heads": fusion_heads,
    }
    encoder = None
    if spec.graph_encoder is not None:
        factory = ENCODERS[spec.graph_encoder]
        encoder = factory(
            atom_table,
            hidden_features=hidden_features,
            alignn_layers=alignn_layers,
            gcn_layers=gcn_layers,
            readout=readout,
        )
        encoder = _with_text(spec, encoder, text_dim, fusion_heads)
    return _assemble(config, spec, encoder)
