r"""Text inside the ALIGNN graph computation: FiLM conditioning and token cross-attention (docs/method.md §11).

CrysMMNet meets text and graph only at the head. The two encoders here let the text act on the graph:

- ``FiLMALIGNN`` (variant `crysmmnet_film`): the cached [CLS] vector c of each crystal scales and shifts the node
  and edge features before every ALIGNN and GCN layer,

  .. math::
      z = \mathrm{SiLU}(W_c c + b_c), \quad
      (\gamma^h_l, \beta^h_l, \gamma^e_l, \beta^e_l) = W_l z + b_l, \quad
      h \leftarrow (1 + \gamma^h_l) \odot h + \beta^h_l, \quad e \leftarrow (1 + \gamma^e_l) \odot e + \beta^e_l,

  with W_l, b_l zero at initialisation (the first step is the unconditioned encoder).
- ``CrossAttentionALIGNN`` (variants `crysmmnet_xattn*`): after the layers every atom attends to the token states
  of its own crystal's text (``TokenCrossAttention``); the crystal vector is [mean_i h_i ; mean_i a_i].

Both return a pooled crystal vector like every graph encoder, so ``PropertyModel`` adds the CrysMMNet head (the
[CLS] projection joins at the end as well). Torch only: tensors in, tensors out.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch_geometric.utils import to_dense_batch

from crys_pipeline.models.alignn import ALIGNNEncoder
from crys_pipeline.models.layers import readout

#: Width of the text vector z that FiLM's per-layer maps read.
FILM_DIM = 64


class TextFiLM(nn.Module):
    r"""Per-layer scale and shift of node and edge features from one text vector per crystal.

    z = SiLU(Lin(D -> P)(c)); for layer l, [gamma_h, beta_h, gamma_e, beta_e] = Lin_l(P -> 4H)(z), zero-initialised;
    h <- (1 + gamma_h[crystal of the atom]) * h + beta_h[...], e likewise with the crystal of the bond's source.

    Args:
        text_dim: D, width of the [CLS] embedding.
        features: H, the node and edge width.
        layers: number of modulated layers (ALIGNN + GCN layers).
        hidden: P, width of z.

    Shapes:
        text: [B, D] -> per-layer parameters [L, B, 4H] (``forward``); ``modulate``: h [N, H], e [E, H] with their
        crystal indices [N], [E] -> (h' [N, H], e' [E, H]).
    """

    def __init__(self, text_dim: int, features: int, layers: int, hidden: int = FILM_DIM) -> None:
        super().__init__()
        self.features = features
        self.text = nn.Sequential(nn.Linear(text_dim, hidden), nn.SiLU())
        self.layers = nn.ModuleList(nn.Linear(hidden, 4 * features) for _ in range(layers))
        for layer in self.layers:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        """[L, B, 4H]: (gamma_h | beta_h | gamma_e | beta_e) of every layer and crystal."""
        z = self.text(text)
        return torch.stack([layer(z) for layer in self.layers])

    def modulate(self, params: torch.Tensor, h: torch.Tensor, e: torch.Tensor, node_crystal: torch.Tensor,
                 edge_crystal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply one layer's parameters [B, 4H] to node and edge features."""
        gamma_h, beta_h, gamma_e, beta_e = params.split(self.features, dim=1)  # 4 x [B, H]
        h = h * (1 + gamma_h.index_select(0, node_crystal)) + beta_h.index_select(0, node_crystal)
        e = e * (1 + gamma_e.index_select(0, edge_crystal)) + beta_e.index_select(0, edge_crystal)
        return h, e


class FiLMALIGNN(nn.Module):
    """ALIGNN whose every layer is conditioned on the crystal's [CLS] vector (``TextFiLM``), pooled per crystal.

    Args:
        encoder: the ALIGNN encoder (its ``atom_states`` hook applies the modulation before each layer).
        text_dim: D, width of the [CLS] embedding.

    Shapes:
        batch: as ``ALIGNNEncoder`` plus text_emb [B, D]. output: [B, H].
    """

    def __init__(self, encoder: ALIGNNEncoder, text_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.out_features = encoder.out_features
        self.film = TextFiLM(text_dim, encoder.out_features, len(encoder.alignn_layers) + len(encoder.gcn_layers))

    def forward(self, batch) -> torch.Tensor:
        """Pooled crystal vectors [B, H]."""
        params = self.film(batch.text_emb.float())  # [L, B, 4H]
        edge_crystal = batch.batch.index_select(0, batch.edge_index[0])  # [E]

        def condition(layer: int, h: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.film.modulate(params[layer], h, e, batch.batch, edge_crystal)

        h = self.encoder.atom_states(batch, condition)
        return readout(h, batch=batch.batch, num_graphs=batch.num_graphs, reduce=self.encoder.reduce)

    def settings(self) -> dict:
        """What model.json records of the fusion (``registry.encoder_settings``)."""
        return {"fusion": "film", "film_dim": FILM_DIM, "modulated_layers": len(self.film.layers),
                "project_choices": ["FiLM before every ALIGNN and GCN layer, node and edge features",
                                    "zero-initialised per-layer maps", "the [CLS] head of CrysMMNet kept"]}


class TokenCrossAttention(nn.Module):
    r"""Multi-head attention of atoms (queries) over the token states of their own crystal's text (keys, values).

    .. math::
        q_i = W_Q \mathrm{LN}(h_i), \quad k_t = W_K \mathrm{LN}(s_t), \quad v_t = W_V \mathrm{LN}(s_t), \\
        \alpha^m_{it} = \mathrm{softmax}_{t \in T(i)}\big(q^m_i \cdot k^m_t / \sqrt{d}\big), \quad
        a_i = W_O \big[\textstyle\sum_t \alpha^m_{it} v^m_t\big]_{m=1..M}

    per head m (d = H / M), t running over the real tokens of the crystal of atom i: padding is masked out of the
    softmax, so padded tokens change nothing. An atom of a crystal without tokens gets a_i = W_O 0 = b_O.

    Args:
        features: H, the atom width (and the attention width).
        token_dim: D, width of the token states.
        heads: M (must divide H).

    Shapes:
        h: [N, H]; crystal: [N] crystal of each atom (sorted); tokens: [B, T, D]; mask: [B, T] bool, True for a real
        token. output: (a [N, H], weights [N, M, T], zero at padded tokens).
    """

    def __init__(self, features: int, token_dim: int, heads: int) -> None:
        super().__init__()
        if features % heads:
            raise ValueError(f"fusion_heads {heads} must divide hidden_features {features}")
        self.heads, self.head_dim = heads, features // heads
        self.atom_norm = nn.LayerNorm(features)
        self.token_norm = nn.LayerNorm(token_dim)
        self.query = nn.Linear(features, features)
        self.key = nn.Linear(token_dim, features)
        self.value = nn.Linear(token_dim, features)
        self.out = nn.Linear(features, features)

    def forward(self, h: torch.Tensor, crystal: torch.Tensor, tokens: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attended text per atom and the attention weights."""
        n_crystals, n_tokens = mask.shape
        q, atom_mask = to_dense_batch(self.query(self.atom_norm(h)), crystal, batch_size=n_crystals)  # [B, A, H]
        s = self.token_norm(tokens)
        k = self.key(s).view(n_crystals, n_tokens, self.heads, self.head_dim).transpose(1, 2)  # [B, M, T, d]
        v = self.value(s).view(n_crystals, n_tokens, self.heads, self.head_dim).transpose(1, 2)  # [B, M, T, d]
        q = q.view(n_crystals, -1, self.heads, self.head_dim).transpose(1, 2)  # [B, M, A, d]
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # [B, M, A, T]
        has_tokens = mask.any(dim=1)  # [B]; a crystal without tokens attends to nothing (weights 0, no NaN)
        keys = mask | ~has_tokens[:, None]
        scores = scores.masked_fill(~keys[:, None, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1) * has_tokens[:, None, None, None]
        attended = (weights @ v).transpose(1, 2).reshape(n_crystals, -1, self.heads * self.head_dim)  # [B, A, H]
        per_atom = weights.permute(0, 2, 1, 3)[atom_mask]  # [B, M, A, T] -> [N, M, T]
        return self.out(attended[atom_mask]), per_atom


def dense_tokens(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [B, T, D] float32, zero-padded; mask [B, T]) of the ragged ``tokens`` [sum T_b, D] and ``n_tokens``."""
    counts = batch.n_tokens.view(-1)
    owner = torch.repeat_interleave(torch.arange(counts.shape[0], device=counts.device), counts)  # [sum T_b]
    return to_dense_batch(batch.tokens.float(), owner, batch_size=batch.num_graphs)


class CrossAttentionALIGNN(nn.Module):
    """ALIGNN whose atoms attend to their text's token states; crystal vector [mean_i h_i ; mean_i a_i].

    Args:
        encoder: the ALIGNN encoder.
        token_dim: D, width of the token states.
        heads: attention heads M.

    Shapes:
        batch: as ``ALIGNNEncoder`` plus tokens [sum T_b, D] (real tokens only, crystal after crystal) and
        n_tokens [B]. output: [B, 2H].
    """

    def __init__(self, encoder: ALIGNNEncoder, token_dim: int, heads: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.cross = TokenCrossAttention(encoder.out_features, token_dim, heads)
        self.out_features = 2 * encoder.out_features

    def attend(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(atom states h [N, H], attended text a [N, H], weights [N, M, T], token mask [B, T])."""
        h = self.encoder.atom_states(batch)
        tokens, mask = dense_tokens(batch)
        attended, weights = self.cross(h, batch.batch, tokens, mask)
        return h, attended, weights, mask

    def forward(self, batch) -> torch.Tensor:
        """Pooled crystal vectors [B, 2H]."""
        h, attended, _, _ = self.attend(batch)
        pool = {"batch": batch.batch, "num_graphs": batch.num_graphs, "reduce": self.encoder.reduce}
        return torch.cat([readout(h, **pool), readout(attended, **pool)], dim=1)

    def settings(self) -> dict:
        """What model.json records of the fusion (``registry.encoder_settings``)."""
        return {"fusion": "cross_attention", "heads": self.cross.heads,
                "project_choices": ["atoms attend after the last GCN layer", "pre-LayerNorm on atoms and tokens",
                                    "crystal vector [mean h ; mean attended text]",
                                    "the [CLS] head of CrysMMNet kept"]}
