"""The property model: optional graph encoder and/or cached text embedding -> scalar (docs/method.md §4.5).

One module covers every variant: CrysMMNet (graph + text, fused), the graph-only baselines and
CrysTextNet (text only). Which parts exist is decided by ``crys_pipeline.models.registry.build_model``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class TargetScale(nn.Module):
    """The target scaling: y = shift + scale * u maps the head's output u to the target's unit.

    `none` is shift 0, scale 1 (exactly the identity); `standardize` holds the training targets' mean and
    standard deviation, so the head learns u = (y - mean) / std. Both are buffers: model.pt carries them and
    a reader can check them against model.json.

    Args:
        shift: added after scaling (the training mean).
        scale: multiplies u (the training standard deviation).

    Shapes:
        input: [B] (forward: u; normalize: y). output: [B].
    """

    def __init__(self, shift: float = 0.0, scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor(float(shift)))
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """U in the target's unit."""
        return u * self.scale + self.shift

    def normalize(self, y: torch.Tensor) -> torch.Tensor:
        """Targets y on the scale the head learns."""
        return (y - self.shift) / self.scale


class PropertyModel(nn.Module):
    """Graph and/or text representation -> one regression output per crystal.

    z_G = graph_projection(graph_encoder(batch)); z_T = text_projection(batch.text_emb);
    u = head([z_G ; z_T]) (only the parts that exist, graph first); y = target_scale(u), the prediction in
    the target's unit (identity link; ``standardized`` returns u, the scale the loss is computed on).

    Args:
        config: JSON-serialisable constructor arguments of ``build_model`` (kept as ``.config``).
        graph_encoder: module mapping a Batch to [B, G], or None (text-only).
        graph_projection: module [B, G] -> [B, P] (ProjectionHead or Identity), or None.
        text_projection: module [B, text_dim] -> [B, Q], or None (graph-only).
        head: module [B, P + Q] -> [B, 1].
        target_scale: the target scaling (default the identity).

    Shapes:
        batch: torch_geometric Batch with z [N], edge_index [2, E], edge_vec [E, 3], batch [N],
        num_graphs = B, and text_emb [B, text_dim] when text is used (text-only batches carry no nodes).
        output: [B].
    """

    def __init__(
        self,
        config: dict[str, Any],
        graph_encoder: nn.Module | None,
        graph_projection: nn.Module | None,
        text_projection: nn.Module | None,
        head: nn.Module,
        target_scale: TargetScale | None = None,
    ) -> None:
        super().__init__()
        if graph_encoder is None and text_projection is None:
            raise ValueError("a model needs a graph encoder, a text projection or both")
        self.config = dict(config)
        self.graph_encoder = graph_encoder
        self.graph_projection = graph_projection
        self.text_projection = text_projection
        self.head = head
        self.target_scale = target_scale if target_scale is not None else TargetScale()

    def forward(self, batch) -> torch.Tensor:
        """Predict one value per crystal in ``batch``, in the target's unit."""
        return self.target_scale(self.standardized(batch))

    def standardized(self, batch) -> torch.Tensor:
        """The head's output u per crystal: the prediction on the scale of ``target_scale.normalize(y)``."""
        parts = []
        if self.graph_encoder is not None:
            parts.append(self.graph_projection(self.graph_encoder(batch)))
        if self.text_projection is not None:
            parts.append(self.text_projection(batch.text_emb))
        return self.head(torch.cat(parts, dim=1))[:, 0]  # [B, 1] -> [B], safe for B = 1
