"""Matplotlib drawings of [CLS] attention: one text word by word, and the per-category summary heatmap.

`plot_words` writes the text on wrapped lines with each word's box coloured by the attention it
receives (word pieces merged back into words, summed over pieces, averaged over heads);
`plot_summary` draws the content share per token category and layer. matplotlib is imported
inside the functions that draw.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from crys_pipeline.attention.encoder import EncodedAttention, Word, merge_words
from crys_pipeline.attention.tagging import CATEGORIES, GLOBAL_CATEGORIES, LOCAL_CATEGORIES


def layout_words(
    text: str, *, words: list[Word], wrap: int, first_col: int = 0
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


#: The colour bar's label of a [CLS] attention word plot.
CLS_LABEL = "[CLS] attention per word (sum over its pieces, mean over heads)"


def _draw_colour_bar(fig: Any, norm: Any, cmap: Any, wrap: int, size_in: tuple[float, float],
                     label: str = CLS_LABEL) -> None:
    """Horizontal colour bar of the word weights below the text of a `plot_words` figure."""
    from matplotlib.cm import ScalarMappable

    width_in, height_in = size_in
    cax = fig.add_axes(
        (0.3 / width_in, 0.5 / height_in, min(6.0, wrap * CHAR_IN) / width_in, 0.12 / height_in)
    )
    ticks = norm.vmax * np.array([0.0, 0.05, 0.25, 0.5, 1.0])
    bar = fig.colorbar(
        ScalarMappable(norm=norm, cmap=cmap), cax=cax, orientation="horizontal", ticks=ticks, format="%.2g"
    )
    bar.set_label(label, fontsize=8)
    bar.ax.tick_params(labelsize=7)


def plot_words(
    words: list[Word],
    *,
    weights: np.ndarray,
    is_global: list[bool],
    text: str,
    specials: dict[str, float],
    title: str,
    path: Path,
    wrap: int = 110,
    bar_label: str = CLS_LABEL,
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
        bar_label: what the colour scale shows.
    """
    from matplotlib import colormaps
    from matplotlib.colors import PowerNorm
    from matplotlib.figure import Figure

    labels = [f"[{k}] {v:.2f}" for k, v in specials.items()]
    positions, end_col = layout_words(text, words=words, wrap=wrap,
                                      first_col=len(labels[0]) + 1 if labels else 0)
    n_lines = positions[-1][0] + 1 if positions else 1
    cmap, norm = colormaps["Reds"], PowerNorm(0.5, vmin=0.0, vmax=max(float(weights.max(initial=0.0)), 1e-6))
    boxes = [(w.text, line, col, cmap(norm(x))) for w, (line, col), x in zip(words, positions, weights, strict=True)]
    grey = (0.8, 0.8, 0.8, 1.0)
    boxes += [
        (lab, line, col, grey) for lab, (line, col) in zip(labels, [(0, 0), (n_lines - 1, end_col + 1)], strict=False)
    ]
    underlines = [(line, col, len(w.text)) for w, (line, col), g in zip(words, positions, is_global, strict=True) if g]
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
    _draw_colour_bar(fig, norm, cmap, wrap, (width_in, height_in), bar_label)
    legend = "blue underline: global section; grey: special tokens (value shown, off the colour scale)"
    fig.suptitle(
        f"{title}\n{legend}", fontsize=9, x=0.3 / width_in, ha="left", y=1 - 0.08 / height_in, va="top"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def plot_layer(
    enc: EncodedAttention, *, layer: int, global_len: int, title: str, path: Path, wrap: int
) -> None:
    """`plot_words` of one layer: word weight = sum over its pieces of the head-averaged [CLS] attention."""
    words = merge_words(enc)
    mean_heads = enc.weights[layer - 1].mean(axis=0)  # [H, T] -> [T]
    word_weights = np.array([mean_heads[list(w.tokens)].sum() for w in words])
    specials = {"CLS": float(mean_heads[0]), "SEP": float(mean_heads[-1])}
    is_global = [w.start < global_len for w in words]
    plot_words(words, weights=word_weights, is_global=is_global, text=enc.text, specials=specials,
               title=title, path=path, wrap=wrap)


def _summary_grid(summary: Any) -> tuple[list[str], list[int], np.ndarray, np.ndarray]:
    """The grid of an `aggregate_shares` table, ready to draw.

    Returns (category names, layers, [categories, layers + 1] content shares with the token share last,
    [layers] special-token share).
    """
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
