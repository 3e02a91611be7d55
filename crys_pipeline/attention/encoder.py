"""The frozen text encoder with attention outputs: [CLS] attention rows of one text, and its words.

Layers are numbered from 1 (layer 1 is the first transformer block, `attentions[0]` in Hugging
Face terms), so MatSciBERT has layers 1-12 and the offline MiniLM model 1-6. Word pieces are merged
back into the words of the text with the tokenizer's character offsets (`merge_words`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from crys_pipeline.settings import EmbedSettings


@dataclass(frozen=True)
class EncodedAttention:
    """[CLS] attention of one encoded text.

    Attributes:
        text: the normalised text the encoder saw (offsets index into it).
        tokens: word pieces, [CLS] and [SEP] included; T of them.
        offsets: int64 [T, 2] character span of each token in `text` ((0, 0) for special tokens).
        word_ids: int64 [T] index of the word each token belongs to, -1 for special tokens.
        weights: float32 [L, H, T] attention of the [CLS] query over the T tokens, per layer and head.
        truncated: whether the text was longer than max_length tokens (its tail was dropped).
    """

    text: str
    tokens: list[str]
    offsets: np.ndarray
    word_ids: np.ndarray
    weights: np.ndarray
    truncated: bool

    @property
    def special(self) -> np.ndarray:
        """Boolean mask [T]: [CLS] / [SEP] (tokens that belong to no word)."""
        return self.word_ids < 0


@dataclass(frozen=True)
class Word:
    """A word of the text rebuilt from its word pieces: `text == source[start:end]`."""

    text: str
    start: int
    end: int
    tokens: tuple[int, ...]


def encoder_label(settings: EmbedSettings) -> str:
    """The encoder's name as shown on every plot and recorded in every artifact."""
    return settings.model + (f"@{settings.revision}" if settings.revision else "")


@dataclass(frozen=True)
class AttentionEncoder:
    """A loaded BERT-style encoder that returns attention maps.

    Attributes:
        tokenizer: a fast Hugging Face tokenizer (character offsets are needed to rebuild words).
        model: the transformer in eval mode with the eager attention implementation.
        normalize: the text normaliser applied before tokenising (identity for `none`).
        settings: what was loaded (its `label` names the encoder on plots).
        device: torch device the model lives on.
    """

    tokenizer: Any
    model: Any
    normalize: Callable[[str], str]
    settings: EmbedSettings
    device: Any

    @property
    def num_layers(self) -> int:
        """Number of transformer layers (valid layer numbers are 1..num_layers)."""
        return int(self.model.config.num_hidden_layers)

    def encode(self, text: str) -> EncodedAttention:
        """Normalise, tokenise (head truncation to max_length) and return the [CLS] attention rows."""
        import torch

        norm = self.normalize(text)
        enc = self.tokenizer(
            norm,
            return_offsets_mapping=True,
            truncation=True,
            max_length=self.settings.max_length,
            return_tensors="pt",
        )
        word_ids = np.array([-1 if w is None else w for w in enc.word_ids()], dtype=np.int64)
        offsets = enc["offset_mapping"][0].numpy().astype(np.int64)
        with torch.no_grad():
            out = self.model(
                input_ids=enc["input_ids"].to(self.device),
                attention_mask=enc["attention_mask"].to(self.device),
                output_attentions=True,
            )
        if not out.attentions or out.attentions[0] is None:
            label = encoder_label(self.settings)
            raise RuntimeError(f"{label} returned no attention maps (needs eager attention)")
        weights = torch.stack([a[0, :, 0, :] for a in out.attentions])  # L x [H, T, T] -> [L, H, T]
        content_end = int(offsets[word_ids >= 0, 1].max()) if (word_ids >= 0).any() else 0
        return EncodedAttention(
            text=norm,
            tokens=self.tokenizer.convert_ids_to_tokens(enc["input_ids"][0].tolist()),
            offsets=offsets,
            word_ids=word_ids,
            weights=weights.float().cpu().numpy(),
            truncated=content_end < len(norm.rstrip()),
        )


def merge_words(enc: EncodedAttention) -> list[Word]:
    """Merge word pieces back into the words of the text (the tokenizer's pre-tokenised words).

    A word spans from its first piece's start to its last piece's end, so its text is taken from the
    normalised text itself (case and accents as written, not as the uncased vocabulary spells them).
    """
    words: list[Word] = []
    for wid in np.unique(enc.word_ids[enc.word_ids >= 0]):
        idx = np.flatnonzero(enc.word_ids == wid)
        start, end = int(enc.offsets[idx, 0].min()), int(enc.offsets[idx, 1].max())
        words.append(Word(enc.text[start:end], start, end, tuple(int(i) for i in idx)))
    return words


def load_encoder(settings: EmbedSettings) -> AttentionEncoder:
    """The configured encoder, switched to the eager attention implementation.

    Loaded by `embed.TextEncoder` (model resolution, normaliser, device); the eager implementation is the
    one that returns attention maps.
    """
    from crys_pipeline.embed import TextEncoder

    text_encoder = TextEncoder(settings)
    text_encoder.model.set_attn_implementation("eager")
    return AttentionEncoder(
        text_encoder.tokenizer, text_encoder.model, text_encoder.normalize, settings, text_encoder.device
    )
