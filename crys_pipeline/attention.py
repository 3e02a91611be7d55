"""[CLS] attention of the frozen text encoder over Robocrystallographer descriptions (paper section 4.4).

The paper shows, for one material, that the [CLS] token of MatSciBERT's layer 5 attends to the
global tokens of the description (formula, mineral, crystal system, space group, dimensionality)
and to bond types and lengths. This module makes that a measured statement:

* `plot_material` encodes one description with attention outputs and writes a readable plot
  (word pieces merged back into the words of the text, wrapped lines, each word coloured by the
  [CLS] attention it receives, summed over its pieces and averaged over heads) plus a Parquet of
  every (token, word, head, weight) of the chosen layer.
* `summarize` draws a deterministic sample of materials and reports, per layer, the share of
  [CLS] attention that lands on each token category, next to the share of tokens in that
  category (the uniform-attention baseline), so "concentrates on" can be read as an enrichment.

Layers are numbered from 1 (layer 1 is the first transformer block, `attentions[0]` in Hugging
Face terms), so MatSciBERT has layers 1-12 and the offline MiniLM model 1-6.

Token categories are assigned per character of the (normalised) text and a token takes the
category of its first character. The rules follow how robocrys writes a description:

* The global section (robocrys' `mineral` + `component_makeup` parts, optionally a header) is a
  known prefix of the full text (the `global` column of the sections table). Inside it the
  mineral sentence has a fixed template, "<formula> [is <mineral> structured and] crystallizes in
  the <crystal system> <space group> space group.", whose slots give `formula`, `mineral`,
  `crystal_system` and `space_group`; the component-makeup sentence ("The structure is
  <n>-dimensional and consists of ...", which also names the components, their formulas and
  orientations) is `dimensionality`; the remaining template words are `global_other`.
* In the local section (robocrys' `components` part): a number followed by Å (or A after the
  MatSciBERT normaliser), or a range of two such numbers, is a `bond_length`; a coordination
  geometry name (matminer's CrystalNN "ops" names used by robocrys, "<n>-coordinate"), a
  polyhedron name or a polyhedral-connectivity / distortion / tilt word is `geometry`; an element
  symbol with its site label, count or charge ("Na(1)", "NaO5", "O2-") is `site`; any other
  number (digits or a cardinal word such as "six") is `number`; other words are `local_other`.
* Punctuation characters outside those slots are `punctuation`; [CLS] and [SEP] are `special`.
"""

from __future__ import annotations

import logging
import re
import sys
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from crys_pipeline.embed import EncoderSettings

log = logging.getLogger(__name__)

GLOBAL_CATEGORIES = ("formula", "mineral", "crystal_system", "space_group", "dimensionality", "global_other")
LOCAL_CATEGORIES = ("site", "geometry", "bond_length", "number", "local_other")
OTHER_CATEGORIES = ("punctuation", "special")
#: Every token category, in display order.
CATEGORIES: tuple[str, ...] = GLOBAL_CATEGORIES + LOCAL_CATEGORIES + OTHER_CATEGORIES
#: Section ("global", "local", "other") of each category.
SECTION: dict[str, str] = {
    **{c: "global" for c in GLOBAL_CATEGORIES},
    **{c: "local" for c in LOCAL_CATEGORIES},
    **{c: "other" for c in OTHER_CATEGORIES},
}

# fmt: off
#: Element symbols Z = 1..118 (checked against pymatgen's periodic table in the tests).
ELEMENTS = frozenset((
    "H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al", "Si", "P", "S", "Cl", "Ar", "K",
    "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga", "Ge", "As", "Se", "Br", "Kr",
    "Rb", "Sr", "Y", "Zr", "Nb", "Mo", "Tc", "Ru", "Rh", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te", "I",
    "Xe", "Cs", "Ba", "La", "Ce", "Pr", "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb",
    "Lu", "Hf", "Ta", "W", "Re", "Os", "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Po", "At", "Rn", "Fr",
    "Ra", "Ac", "Th", "Pa", "U", "Np", "Pu", "Am", "Cm", "Bk", "Cf", "Es", "Fm", "Md", "No", "Lr", "Rf",
    "Db", "Sg", "Bh", "Hs", "Mt", "Ds", "Rg", "Cn", "Nh", "Fl", "Mc", "Lv", "Ts", "Og",
))

#: Coordination geometry names robocrys 0.2.13 can write: matminer's CrystalNNFingerprint "ops"
#: preset labels without the "CN_n" suffix ("sgl_bd" is written "single-bond"), plus q2/q4/q6.
GEOMETRY_NAMES = (
    "single-bond", "L-shaped", "water-like", "bent 120 degrees", "bent 150 degrees", "linear",
    "trigonal planar", "trigonal non-coplanar", "T-shaped", "square co-planar", "tetrahedral",
    "rectangular see-saw-like", "see-saw-like", "trigonal pyramidal", "pentagonal planar",
    "square pyramidal", "trigonal bipyramidal", "hexagonal planar", "octahedral", "pentagonal pyramidal",
    "hexagonal pyramidal", "pentagonal bipyramidal", "body-centered cubic", "hexagonal bipyramidal",
    "cuboctahedral", "q2", "q4", "q6",
)
#: Polyhedron names (robocrys.util.geometry_to_polyhedra / polyhedra_plurals), connectivity,
#: distortion and tilt words of the robocrys describer.
GEOMETRY_WORDS = (
    "octahedra", "tetrahedra", "cuboctahedra", "trigonal pyramids", "trigonal pyramid", "square pyramids",
    "square pyramid", "trigonal bipyramids", "trigonal bipyramid", "pentagonal pyramids",
    "pentagonal pyramid", "hexagonal pyramids", "hexagonal pyramid", "pentagonal bipyramids",
    "pentagonal bipyramid", "hexagonal bipyramids", "hexagonal bipyramid", "corner-sharing", "edge-sharing",
    "face-sharing", "corners", "corner", "edges", "edge", "faces", "face", "sharing", "share", "distorted",
    "geometry", "tilt angles", "tilted", "tilt",
)
#: Cardinal number words (robocrys writes neighbour counts with inflect's number_to_words).
CARDINALS = (
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty", "thirty",
    "forty", "fifty", "sixty", "seventy", "eighty", "ninety", "hundred",
)
# fmt: on


def _alternation(phrases: tuple[str, ...] | list[str]) -> str:
    """Regex alternation of literal phrases, longest first so that the longest phrase wins."""
    return "|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True))


MINERAL_RE = re.compile(
    r"(?P<formula>\S+) (?:is (?P<mineral>.+?) structured and )?crystallizes in the "
    r"(?P<crystal_system>[a-z]+) (?P<space_group>\S+) space group"
)
MAKEUP_RE = re.compile(r"The structure (?:is \S+-dimensional and )?consists of .*?\.(?=\s|$)")
DIMENSIONAL_RE = re.compile(r"(?<![A-Za-z])[a-z]+-dimensional")
BOND_LENGTH_RE = re.compile(r"\d+\.\d+(?:\s*[-\u2013]\s*\d+\.\d+)?\s*(?:\u00c5|A)(?![A-Za-z])")
GEOMETRY_RE = re.compile(
    r"(?<![A-Za-z])(?:" + _alternation(GEOMETRY_NAMES + GEOMETRY_WORDS) + r"|\d+-coordinate)(?![A-Za-z])"
)
SITE_RE = re.compile(
    r"(?P<el>[A-Z][a-z]?)(?![a-z])(?P<suffix>\(\d+\)|\d+(?:\.\d+)?[+-]?|[+-]\d+(?:\.\d+)?[+-])?"
)
NUMBER_RE = re.compile(r"\d+(?:\.\d+)?|(?<![A-Za-z])(?:" + _alternation(CARDINALS) + r")(?![a-z])")
#: Sentence-initial "In" followed by an article is the preposition, not indium.
PREPOSITION_IN_RE = re.compile(r"In(?= (?:the|each|a|an) )")


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
        """bool [T]: [CLS] / [SEP] (tokens that belong to no word)."""
        return self.word_ids < 0


@dataclass(frozen=True)
class Word:
    """A word of the text rebuilt from its word pieces: `text == source[start:end]`."""

    text: str
    start: int
    end: int
    tokens: tuple[int, ...]


def encoder_label(settings: EncoderSettings) -> str:
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
    settings: EncoderSettings
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


def _paint(labels: np.ndarray, spans: list[tuple[int, int]], category: str, limit: tuple[int, int]) -> None:
    """Set `labels[start:end] = category` for each span, clipped to the [lo, hi) region."""
    lo, hi = limit
    for start, end in spans:
        labels[max(start, lo) : min(end, hi)] = category


def _spans(pattern: re.Pattern, text: str, group: int | str = 0) -> list[tuple[int, int]]:
    return [m.span(group) for m in pattern.finditer(text) if m.group(group) is not None]


def _site_spans(text: str) -> list[tuple[int, int]]:
    """Element symbols with their site label / count / charge, skipping the preposition "In"."""
    skip = {m.start() for m in PREPOSITION_IN_RE.finditer(text)}
    return [m.span() for m in SITE_RE.finditer(text) if m.group("el") in ELEMENTS and m.start() not in skip]


def char_categories(text: str, global_len: int) -> np.ndarray:
    """Category of every character of `text` whose first `global_len` characters are the global section.

    Returns:
        object array [len(text)] of category names (see the module docstring for the rules).
    """
    labels = np.empty(len(text), dtype=object)
    glob, g = text[:global_len], (0, global_len)
    loc, lo = text, (global_len, len(text))
    labels[:global_len], labels[global_len:] = "global_other", "local_other"
    _paint(labels, _spans(MAKEUP_RE, glob), "dimensionality", g)
    _paint(
        labels,
        [(i, i + 1) for i, c in enumerate(text) if unicodedata.category(c)[0] in "PS"],
        "punctuation",
        (0, len(text)),
    )
    _paint(labels, _spans(DIMENSIONAL_RE, glob), "dimensionality", g)
    for slot in ("formula", "mineral", "crystal_system", "space_group"):
        _paint(labels, _spans(MINERAL_RE, glob, slot), slot, g)
    _paint(labels, _spans(NUMBER_RE, loc), "number", lo)
    _paint(labels, _site_spans(loc), "site", lo)
    _paint(labels, _spans(GEOMETRY_RE, loc), "geometry", lo)
    _paint(labels, _spans(BOND_LENGTH_RE, loc), "bond_length", lo)
    return labels


def token_categories(enc: EncodedAttention, global_len: int) -> list[str]:
    """Category of every token: that of its first character, `special` for [CLS]/[SEP]."""
    labels = char_categories(enc.text, global_len)
    return [
        "special" if w < 0 or s >= len(labels) else str(labels[s])
        for w, (s, _) in zip(enc.word_ids, enc.offsets)
    ]


def category_shares(enc: EncodedAttention, categories: list[str]) -> dict[str, np.ndarray]:
    """Share of [CLS] attention per category and layer, averaged over heads.

    Returns:
        {category: float64 [L]}; for every layer the shares of all categories sum to 1.
    """
    per_head = enc.weights.astype(np.float64)  # [L, H, T]
    cats = np.asarray(categories, dtype=object)
    return {c: per_head[:, :, cats == c].sum(axis=2).mean(axis=1) for c in CATEGORIES}


def global_prefix_length(normalize: Callable[[str], str], full: str, global_text: str) -> int:
    """Length, in normalised characters, of the global section at the head of the normalised full text.

    The sections stage writes `global` as a prefix of `full`; a mismatch (which would mean the
    sections table is inconsistent) is logged and the common prefix is used.
    """
    norm_full, norm_global = normalize(full), normalize(global_text).rstrip()
    if norm_full.startswith(norm_global):
        return len(norm_global)
    common = 0
    for a, b in zip(norm_full, norm_global):
        if a != b:
            break
        common += 1
    log.warning("global text is not a prefix of the full text; using the %d common characters", common)
    return common


def layout_words(
    text: str, words: list[Word], wrap: int, first_col: int = 0
) -> tuple[list[tuple[int, int]], int]:
    """Place words on wrapped lines, keeping the spacing of the text.

    Words separated by whitespace in the text get one space between them and a line may break
    there; words written together ("Na", "(", "1", ")") stay together. A line breaks before a
    whitespace-delimited chunk that would run past `wrap` characters.

    Returns:
        ([(line, column)] per word, column after the last word).
    """
    positions: list[tuple[int, int]] = []
    line, col, prev_end = 0, first_col, None
    for word in words:
        gap = text[prev_end : word.start] if prev_end is not None else " "
        if any(c.isspace() for c in gap):
            chunk = re.compile(r"\S+").match(text, word.start)
            chunk_len = (chunk.end() if chunk else word.end) - word.start
            if col > 0 and col + 1 + chunk_len > wrap:
                line, col = line + 1, 0
            elif col > 0:
                col += 1
        positions.append((line, col))
        col += len(word.text)
        prev_end = word.end
    return positions, col


def _text_colour(rgba: tuple[float, ...]) -> str:
    luminance = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]
    return "black" if luminance > 0.55 else "white"


#: Word plot geometry: DejaVu Sans Mono at 9 pt is 0.602 em wide; lines are 1.7 em apart (inches).
FONT = {"family": "DejaVu Sans Mono", "size": 9, "va": "center"}
CHAR_IN, LINE_IN = 9 * 0.602 / 72, 9 * 1.7 / 72


def _draw_boxes(
    ax: Any, boxes: list[tuple[str, int, int, tuple]], underlines: list[tuple[int, int, int]]
) -> None:
    """Draw (text, line, column, rgba) boxes in character units and (line, column, length) underlines."""
    from matplotlib.collections import LineCollection, PatchCollection
    from matplotlib.patches import Rectangle

    rects = [Rectangle((col, line - 0.42), len(text), 0.84) for text, line, col, _ in boxes]
    ax.add_collection(PatchCollection(rects, facecolors=[rgba for *_, rgba in boxes], edgecolors="none"))
    for text, line, col, rgba in boxes:
        ax.text(col, line, text, color=_text_colour(rgba), **FONT)
    segments = [[(col, line + 0.47), (col + n, line + 0.47)] for line, col, n in underlines]
    ax.add_collection(LineCollection(segments, colors="tab:blue", linewidths=1.2))


def plot_words(
    words: list[Word],
    weights: np.ndarray,
    is_global: list[bool],
    text: str,
    specials: dict[str, float],
    title: str,
    path: Path,
    wrap: int = 110,
) -> None:
    """Draw the text word by word, each word's box coloured by its attention weight.

    Args:
        words: the words of the text (from `merge_words`).
        weights: float [len(words)] weight of each word (colour scale 0..max, square-root stretched).
        is_global: per word, whether it lies in the global section (underlined in blue).
        text: the normalised text (for spacing).
        specials: weights of the special tokens, drawn first and last as grey boxes with their value.
        title: figure title (names the material, layer and encoder).
        path: PNG to write.
        wrap: characters per line.
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import PowerNorm
    from matplotlib.figure import Figure

    labels = [f"[{k}] {v:.2f}" for k, v in specials.items()]
    positions, end_col = layout_words(text, words, wrap, first_col=len(labels[0]) + 1 if labels else 0)
    n_lines = positions[-1][0] + 1 if positions else 1
    cmap, norm = colormaps["Reds"], PowerNorm(0.5, vmin=0.0, vmax=max(float(weights.max(initial=0.0)), 1e-6))
    boxes = [(w.text, line, col, cmap(norm(x))) for w, (line, col), x in zip(words, positions, weights)]
    grey = (0.8, 0.8, 0.8, 1.0)
    boxes += [
        (lab, line, col, grey) for lab, (line, col) in zip(labels, [(0, 0), (n_lines - 1, end_col + 1)])
    ]
    underlines = [(line, col, len(w.text)) for w, (line, col), g in zip(words, positions, is_global) if g]
    top_in, bottom_in = 0.55, 0.95
    width_in, height_in = wrap * CHAR_IN + 0.6, n_lines * LINE_IN + top_in + bottom_in
    fig = Figure(figsize=(width_in, height_in))
    ax = fig.add_axes(
        (0.3 / width_in, bottom_in / height_in, wrap * CHAR_IN / width_in, n_lines * LINE_IN / height_in)
    )
    ax.set_xlim(0, wrap)
    ax.set_ylim(n_lines - 0.5, -0.5)
    ax.axis("off")
    _draw_boxes(ax, boxes, underlines)
    cax = fig.add_axes(
        (0.3 / width_in, 0.5 / height_in, min(6.0, wrap * CHAR_IN) / width_in, 0.12 / height_in)
    )
    ticks = norm.vmax * np.array([0.0, 0.05, 0.25, 0.5, 1.0])
    bar = fig.colorbar(
        ScalarMappable(norm=norm, cmap=cmap), cax=cax, orientation="horizontal", ticks=ticks, format="%.2g"
    )
    bar.set_label("[CLS] attention per word (sum over its pieces, mean over heads)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    legend = "blue underline: global section; grey: special tokens (value shown, off the colour scale)"
    fig.suptitle(
        f"{title}\n{legend}", fontsize=9, x=0.3 / width_in, ha="left", y=1 - 0.08 / height_in, va="top"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def load_encoder(settings: EncoderSettings) -> AttentionEncoder:
    """The configured encoder, loaded by `embed.TextEncoder` (model resolution, normaliser, device),
    switched to the eager attention implementation, the one that returns attention maps."""
    from crys_pipeline.embed import TextEncoder

    text_encoder = TextEncoder(settings)
    text_encoder.model.set_attn_implementation("eager")
    return AttentionEncoder(
        text_encoder.tokenizer, text_encoder.model, text_encoder.normalize, settings, text_encoder.device
    )


@dataclass(frozen=True)
class SectionText:
    """One material's text of the chosen variant and where its global section ends."""

    material_id: str
    text: str
    global_len: int


VARIANTS = ("full", "global", "local")


def read_sections(sections: Path) -> list[dict[str, Any]]:
    """Rows (material_id, status, error, full, global, local) of a sections table, sorted by material id."""
    from crys_pipeline import io

    table = io.read_parquet(sections, "sections", columns=["material_id", "status", "error", *VARIANTS])
    return sorted(table.to_pylist(), key=lambda r: r["material_id"])


def section_text(row: dict[str, Any], variant: str, normalize: Callable[[str], str]) -> SectionText:
    """The `variant` text of a sections row; `global_len` counts normalised characters."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown text variant {variant!r} (full | global | local)")
    full, glob = row["full"] or "", row["global"] or ""
    glen = {
        "full": global_prefix_length(normalize, full, glob) if glob else 0,
        "global": len(normalize(glob)),
        "local": 0,
    }[variant]
    return SectionText(row["material_id"], row[variant] or "", glen)


def _params(settings: EncoderSettings, variant: str) -> dict[str, Any]:
    """Artifact params naming the encoder and the text it read."""
    return {
        "encoder": encoder_label(settings),
        "max_length": settings.max_length,
        "normalizer": settings.normalizer,
        "variant": variant,
    }


def _check_layer(encoder: AttentionEncoder, layer: int) -> None:
    if not 1 <= layer <= encoder.num_layers:
        label = encoder_label(encoder.settings)
        raise ValueError(f"layer {layer} out of range: {label} has layers 1..{encoder.num_layers}")


def attention_table(material_id: str, enc: EncodedAttention, layer: int, categories: list[str]) -> Any:
    """Long table of one layer: one row per (head, token) with the token's word and category.

    Returns:
        pyarrow.Table with columns of the `attention` layout (H * T rows).
    """
    import pyarrow as pa

    n_heads, n_tokens = enc.weights.shape[1:]
    words = merge_words(enc)
    word_text = {int(wid): w.text for wid, w in zip(np.unique(enc.word_ids[enc.word_ids >= 0]), words)}
    tok_words = [word_text.get(int(w), tok) for w, tok in zip(enc.word_ids, enc.tokens)]
    return pa.table(
        {
            "material_id": [material_id] * (n_heads * n_tokens),
            "layer": np.full(n_heads * n_tokens, layer, dtype=np.int32),
            "head": np.repeat(np.arange(1, n_heads + 1, dtype=np.int32), n_tokens),
            "token_index": np.tile(np.arange(n_tokens, dtype=np.int32), n_heads),
            "token": enc.tokens * n_heads,
            "word_index": np.tile(enc.word_ids.astype(np.int32), n_heads),
            "word": tok_words * n_heads,
            "category": list(categories) * n_heads,
            "weight": enc.weights[layer - 1].reshape(-1).astype(np.float32),  # [H, T] -> [H*T], head-major
        }
    )


def plot_material(
    sections: Path,
    material_id: str,
    layer: int,
    variant: str,
    settings: EncoderSettings,
    out_png: Path,
    out_parquet: Path,
    wrap: int = 110,
) -> None:
    """Plot and tabulate the [CLS] attention of one layer over one material's description.

    Args:
        sections: sections table (results/text/{source}/sections.parquet).
        material_id: the material to show; it must have status ok.
        layer: transformer layer, numbered from 1.
        variant: text variant (full | global | local).
        settings: the encoder to load.
        out_png: plot path; out_parquet: (token, word, head, weight) table path.
        wrap: characters per plotted line.
    """
    from crys_pipeline import io

    row = _material_row(sections, material_id)
    encoder = load_encoder(settings)
    _check_layer(encoder, layer)
    item = section_text(row, variant, encoder.normalize)
    enc = encoder.encode(item.text)
    title = (
        f"{material_id} ({variant} text): [CLS] attention in layer {layer} of {encoder.num_layers}, "
        f"mean over {enc.weights.shape[1]} heads; encoder {encoder_label(settings)}; {len(enc.tokens)} tokens"
        + (f", truncated to {settings.max_length}" if enc.truncated else "")
    )
    _plot_layer(enc, layer, item.global_len, title, out_png, wrap)
    params = {**_params(settings, variant), "layer": layer, "material_id": material_id}
    extra = {
        "text": enc.text,
        "global_len": item.global_len,
        "truncated": enc.truncated,
        "num_layers": encoder.num_layers,
        "num_heads": int(enc.weights.shape[1]),
    }
    table = attention_table(material_id, enc, layer, token_categories(enc, item.global_len))
    io.write_parquet(table, out_parquet, "attention", params, extra)
    log.info("%s: layer %d, %d tokens -> %s, %s", material_id, layer, len(enc.tokens), out_png, out_parquet)


def _material_row(sections: Path, material_id: str) -> dict[str, Any]:
    """The sections row of one material; a missing id or a failed description is an error."""
    from crys_pipeline.schemas import STATUS_OK

    row = next((r for r in read_sections(sections) if r["material_id"] == material_id), None)
    if row is None:
        raise ValueError(f"{material_id!r} is not in {sections}")
    if row["status"] != STATUS_OK:
        raise ValueError(f"{material_id!r} has no text: status {row['status']}: {row['error']}")
    return row


def _plot_layer(
    enc: EncodedAttention, layer: int, global_len: int, title: str, path: Path, wrap: int
) -> None:
    """`plot_words` of one layer: word weight = sum over its pieces of the head-averaged [CLS] attention."""
    words = merge_words(enc)
    mean_heads = enc.weights[layer - 1].mean(axis=0)  # [H, T] -> [T]
    word_weights = np.array([mean_heads[list(w.tokens)].sum() for w in words])
    specials = {"CLS": float(mean_heads[0]), "SEP": float(mean_heads[-1])}
    is_global = [w.start < global_len for w in words]
    plot_words(words, word_weights, is_global, enc.text, specials, title, path, wrap)


def material_shares(material_id: str, enc: EncodedAttention, categories: list[str]) -> list[dict[str, Any]]:
    """Rows of the `attention_shares` layout for one material: one per (layer, category).

    `share` is the head-averaged [CLS] attention on the category; `content_share` the same with the
    special tokens left out (renormalised over the text's own tokens); `n_tokens` / `content_tokens`
    give the uniform-attention baseline n_tokens / content_tokens.
    """
    shares = category_shares(enc, categories)
    counts = {c: categories.count(c) for c in CATEGORIES}
    content_tokens = len(categories) - counts["special"]
    rows = []
    for layer in range(enc.weights.shape[0]):
        rest = 1.0 - shares["special"][layer]
        for cat in CATEGORIES:
            content = None if cat == "special" or rest <= 0 else float(shares[cat][layer] / rest)
            rows.append(
                {
                    "material_id": material_id,
                    "status": "ok",
                    "error": None,
                    "layer": layer + 1,
                    "category": cat,
                    "share": float(shares[cat][layer]),
                    "content_share": content,
                    "n_tokens": counts[cat],
                    "content_tokens": content_tokens,
                    "truncated": enc.truncated,
                }
            )
    return rows


def sample_texts(texts: list[SectionText], sample: int | None, seed: int) -> list[SectionText]:
    """A deterministic sample: `sample` of the id-sorted texts drawn with numpy's default_rng(seed); None = all."""
    if sample is None or sample >= len(texts):
        return list(texts)
    picked = np.random.default_rng(seed).choice(len(texts), size=sample, replace=False)
    return [texts[i] for i in sorted(picked)]


def aggregate_shares(rows: list[dict[str, Any]]) -> Any:
    """Per (layer, category) and per (layer, section) summary over the ok materials.

    Section rows add up the global and the local categories (punctuation and special tokens are
    rows of their own). Columns: layer, level (category | section), name, section, n_materials,
    share_mean, share_std, content_share_mean (special tokens left out), token_fraction_mean (share of
    the text's own tokens, i.e. what uniform attention would give) and enrichment
    (content_share_mean / token_fraction_mean; > 1 means attended more than its token count).

    Returns:
        polars.DataFrame sorted by layer, level and display order.
    """
    import polars as pl

    ok = pl.DataFrame([r for r in rows if r["status"] == "ok"], infer_schema_length=None).with_columns(
        section=pl.col("category").replace_strict(SECTION),
        token_fraction=pl.when(pl.col("category") != "special").then(
            pl.col("n_tokens") / pl.col("content_tokens")
        ),
    )
    by_section = (
        ok.filter(pl.col("section") != "other")
        .group_by("material_id", "layer", "section")
        .agg(pl.col("share").sum(), pl.col("content_share").sum(), pl.col("token_fraction").sum())
        .with_columns(category=pl.col("section"))
    )
    stats = {
        "n_materials": pl.col("material_id").n_unique(),
        "share_mean": pl.col("share").mean(),
        "share_std": pl.col("share").std(),
        "content_share_mean": pl.col("content_share").mean(),
        "token_fraction_mean": pl.col("token_fraction").mean(),
    }
    order = {name: i for i, name in enumerate(CATEGORIES + ("global", "local"))}
    out = pl.concat(
        [
            frame.group_by("layer", "category", "section").agg(**stats).with_columns(level=pl.lit(level))
            for level, frame in (("category", ok), ("section", by_section))
        ]
    ).rename({"category": "name"})
    out = out.with_columns(
        enrichment=pl.col("content_share_mean") / pl.col("token_fraction_mean"),
        order=pl.col("name").replace_strict(order),
    )
    return out.sort("layer", "level", "order").select(
        "layer",
        "level",
        "name",
        "section",
        "n_materials",
        "share_mean",
        "share_std",
        "content_share_mean",
        "token_fraction_mean",
        "enrichment",
    )


def _summary_grid(summary: Any) -> tuple[list[str], list[int], np.ndarray, np.ndarray]:
    """(category names, layers, [categories, layers + 1] content shares with the token share last,
    [layers] special-token share) of an `aggregate_shares` table."""
    import polars as pl

    cats = summary.filter(pl.col("level") == "category")
    layers = sorted(cats["layer"].unique().to_list())
    names = [c for c in CATEGORIES if c != "special"]

    def column(layer: int, value: str) -> list[float]:
        per_layer = dict(cats.filter(pl.col("layer") == layer).select("name", value).iter_rows())
        return [per_layer[c] for c in names]

    table = np.column_stack(
        [column(layer, "content_share_mean") for layer in layers] + [column(layers[0], "token_fraction_mean")]
    )
    special = cats.filter(pl.col("name") == "special").sort("layer")["share_mean"].to_numpy()
    return names, layers, table, special


def plot_summary(summary: Any, title: str, path: Path) -> None:
    """Heatmap of the content share of [CLS] attention per category (rows) and layer (columns).

    A last column gives each category's share of tokens (uniform-attention baseline); a strip on
    top gives the share absorbed by the special tokens per layer.
    """
    from matplotlib.figure import Figure

    names, layers, table, special = _summary_grid(summary)
    fig = Figure(figsize=(1.6 + 0.75 * (len(layers) + 1), 6.2))
    top, ax = fig.subplots(2, 1, height_ratios=[1, 7], gridspec_kw={"hspace": 0.08})
    vmax = float(np.nanmax(table))
    ax.imshow(table, cmap="Reds", aspect="auto", vmin=0, vmax=vmax)
    for (i, j), v in np.ndenumerate(table):
        colour = "white" if v > 0.6 * vmax else "black"
        ax.text(j, i, f"{100 * v:.1f}", ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(len(layers) + 1), [f"L{layer}" for layer in layers] + ["tokens"], fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.axvline(len(layers) - 0.5, color="black", lw=1)
    for boundary in (len(GLOBAL_CATEGORIES), len(GLOBAL_CATEGORIES + LOCAL_CATEGORIES)):
        ax.axhline(boundary - 0.5, color="black", lw=0.6, ls="--")
    ax.set_xlabel(
        "% of [CLS] attention on the text's own tokens (special tokens left out); last column: % of tokens",
        fontsize=7,
    )
    top.bar(range(len(layers)), special, color="grey")
    top.set_xlim(-0.5, len(layers) + 0.5)
    top.set_ylim(0, 1)
    top.set_xticks([])
    top.set_ylabel("[CLS]+[SEP]", fontsize=7)
    top.tick_params(labelsize=7)
    top.set_title(title, fontsize=8, loc="left")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")


def _failed_row(material_id: str, error: str) -> dict[str, Any]:
    from crys_pipeline.schemas import STATUS_FAILED

    return {
        "material_id": material_id,
        "status": STATUS_FAILED,
        "error": error,
        "layer": None,
        "category": None,
        "share": None,
        "content_share": None,
        "n_tokens": None,
        "content_tokens": None,
        "truncated": None,
    }


def collect_shares(encoder: AttentionEncoder, items: list[SectionText]) -> list[dict[str, Any]]:
    """`material_shares` rows of every item; an empty text or an encoder error becomes a failed row."""
    from tqdm import tqdm

    rows: list[dict[str, Any]] = []
    for item in tqdm(items, desc="attention", unit="text", disable=not sys.stderr.isatty()):
        if not item.text.strip():
            rows.append(_failed_row(item.material_id, "empty text"))
            continue
        try:
            enc = encoder.encode(item.text)
        except (RuntimeError, ValueError) as exc:
            rows.append(_failed_row(item.material_id, f"{type(exc).__name__}: {exc}"))
            continue
        rows += material_shares(item.material_id, enc, token_categories(enc, item.global_len))
    return rows


def summarize(
    sections: Path,
    variant: str,
    sample: int | None,
    seed: int,
    settings: EncoderSettings,
    out_csv: Path,
    out_png: Path,
    out_shares: Path,
) -> None:
    """Share of [CLS] attention per token category and layer over a deterministic sample of materials.

    Args:
        sections: sections table (results/text/{source}/sections.parquet).
        variant: text variant (full | global | local).
        sample: materials drawn from the ok rows (see `sample_texts`); None = all.
        seed: sampling seed.
        settings: the encoder to load.
        out_csv: summary table (`aggregate_shares`); out_png: its heatmap;
        out_shares: per-material rows (`attention_shares` layout; failed rows carry the reason).
    """
    import pyarrow as pa

    from crys_pipeline import io
    from crys_pipeline.schemas import STATUS_OK

    rows_in = read_sections(sections)
    encoder = load_encoder(settings)
    texts = [section_text(r, variant, encoder.normalize) for r in rows_in if r["status"] == STATUS_OK]
    items = sample_texts(texts, sample, seed)
    rows = collect_shares(encoder, items)
    n_ok = len({r["material_id"] for r in rows if r["status"] == STATUS_OK})
    if n_ok == 0:
        raise RuntimeError(f"no material of {sections} could be analysed ({len(items)} sampled)")
    params = {**_params(settings, variant), "sample": sample, "seed": seed}
    counts = {"rows": len(rows_in), "sections_ok": len(texts), "sampled": len(items), "analysed": n_ok}
    io.write_parquet(
        pa.Table.from_pylist(rows),
        out_shares,
        "attention_shares",
        params,
        {"counts": counts, "num_layers": encoder.num_layers},
    )
    summary = aggregate_shares(rows)
    io.write_text(summary.write_csv(float_precision=5), out_csv)
    plot_summary(
        summary,
        f"[CLS] attention by token category, {variant} text, {n_ok} materials; "
        f"encoder {encoder_label(settings)}",
        out_png,
    )
    log.info("attention summary over %s: %s", counts, out_csv)
