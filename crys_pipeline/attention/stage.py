"""The attention analysis' two entry points: one material's plot and table, and the sample summary.

* `plot_material` encodes one description with attention outputs and writes a readable plot
  (word pieces merged back into the words of the text, wrapped lines, each word coloured by the
  [CLS] attention it receives, summed over its pieces and averaged over heads) plus a Parquet of
  every (token, word, head, weight) of the chosen layer.
* `summarize` draws a deterministic sample of materials and reports, per layer, the share of
  [CLS] attention that lands on each token category, next to the share of tokens in that
  category (the uniform-attention baseline), so "concentrates on" can be read as an enrichment.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crys_pipeline.attention.drawing import plot_layer, plot_summary
from crys_pipeline.attention.encoder import (
    AttentionEncoder,
    EncodedAttention,
    encoder_label,
    load_encoder,
    merge_words,
)
from crys_pipeline.attention.summary import aggregate_shares, collect_shares, sample_texts
from crys_pipeline.attention.tagging import read_sections, section_text, token_categories

if TYPE_CHECKING:
    from crys_pipeline.settings import EmbedSettings

log = logging.getLogger(__name__)


def _params(settings: EmbedSettings, view: str) -> dict[str, Any]:
    """Artifact params naming the encoder and the text it read."""
    return {
        "encoder": encoder_label(settings),
        "max_length": settings.max_length,
        "normalizer": settings.normalizer,
        "text_view": view,
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
    word_text = {int(wid): w.text for wid, w in zip(np.unique(enc.word_ids[enc.word_ids >= 0]), words, strict=True)}
    tok_words = [word_text.get(int(w), tok) for w, tok in zip(enc.word_ids, enc.tokens, strict=True)]
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
    *,
    material_id: str,
    layer: int,
    view: str,
    settings: EmbedSettings,
    out_png: Path,
    out_parquet: Path,
    wrap: int = 110,
) -> None:
    """Plot and tabulate the [CLS] attention of one layer over one material's description.

    Args:
        sections: sections table (results/text/{source}/sections.parquet).
        material_id: the material to show; it must have status ok.
        layer: transformer layer, numbered from 1.
        view: text view (full | global | local).
        settings: the encoder to load.
        out_png: plot path.
        out_parquet: (token, word, head, weight) table path.
        wrap: characters per plotted line.
    """
    from crys_pipeline import io

    row = _material_row(sections, material_id)
    encoder = load_encoder(settings)
    _check_layer(encoder, layer)
    item = section_text(row, view, encoder.normalize)
    enc = encoder.encode(item.text)
    title = (
        f"{material_id} ({view} text): [CLS] attention in layer {layer} of {encoder.num_layers}, "
        f"mean over {enc.weights.shape[1]} heads; encoder {encoder_label(settings)}; {len(enc.tokens)} tokens"
        + (f", truncated to {settings.max_length}" if enc.truncated else "")
    )
    plot_layer(enc, layer=layer, global_len=item.global_len, title=title, path=out_png, wrap=wrap)
    params = {**_params(settings, view), "layer": layer, "material_id": material_id}
    extra = {
        "text": enc.text,
        "global_len": item.global_len,
        "truncated": enc.truncated,
        "num_layers": encoder.num_layers,
        "num_heads": int(enc.weights.shape[1]),
    }
    table = attention_table(material_id, enc, layer, token_categories(enc, item.global_len))
    io.write_parquet(table, out_parquet, kind="attention", params=params, extra=extra)
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


def summarize(
    sections: Path,
    *,
    view: str,
    sample: int | None,
    seed: int,
    settings: EmbedSettings,
    out_csv: Path,
    out_png: Path,
    out_shares: Path,
) -> None:
    """Share of [CLS] attention per token category and layer over a deterministic sample of materials.

    Args:
        sections: sections table (results/text/{source}/sections.parquet).
        view: text view (full | global | local).
        sample: materials drawn from the ok rows (see `sample_texts`); None = all.
        seed: sampling seed.
        settings: the encoder to load.
        out_csv: summary table (`aggregate_shares`).
        out_png: its heatmap.
        out_shares: per-material rows (`attention_shares` layout; failed rows carry the reason).
    """
    import pyarrow as pa

    from crys_pipeline import io
    from crys_pipeline.schemas import STATUS_OK

    rows_in = read_sections(sections)
    encoder = load_encoder(settings)
    texts = [section_text(r, view, encoder.normalize) for r in rows_in if r["status"] == STATUS_OK]
    items = sample_texts(texts, sample, seed)
    rows = collect_shares(encoder, items)
    n_ok = len({r["material_id"] for r in rows if r["status"] == STATUS_OK})
    if n_ok == 0:
        raise RuntimeError(f"no material of {sections} could be analysed ({len(items)} sampled)")
    params = {**_params(settings, view), "sample": sample, "seed": seed}
    counts = {"rows": len(rows_in), "sections_ok": len(texts), "sampled": len(items), "analysed": n_ok}
    io.write_parquet(
        pa.Table.from_pylist(rows),
        out_shares,
        kind="attention_shares",
        params=params,
        extra={"counts": counts, "num_layers": encoder.num_layers},
    )
    summary = aggregate_shares(rows)
    io.write_text(summary.write_csv(float_precision=5), out_csv)
    plot_summary(
        summary,
        f"[CLS] attention by token category, {view} text, {n_ok} materials; "
        f"encoder {encoder_label(settings)}",
        out_png,
    )
    log.info("attention summary over %s: %s", counts, out_csv)
