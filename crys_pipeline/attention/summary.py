"""Share of [CLS] attention per token category and layer: per material, then aggregated with polars.

Per material and layer, the head-averaged [CLS] attention on each token category is reported next
to the share of tokens in that category (the uniform-attention baseline), so "concentrates on" can
be read as an enrichment; `aggregate_shares` summarises a sample of materials.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from crys_pipeline.attention.encoder import AttentionEncoder, EncodedAttention
from crys_pipeline.attention.tagging import CATEGORIES, SECTION, SectionText, token_categories


def category_shares(enc: EncodedAttention, categories: list[str]) -> dict[str, np.ndarray]:
    """Share of [CLS] attention per category and layer, averaged over heads.

    Returns:
        {category: float64 [L]}; for every layer the shares of all categories sum to 1.
    """
    per_head = enc.weights.astype(np.float64)  # [L, H, T]
    cats = np.asarray(categories, dtype=object)
    return {c: per_head[:, :, cats == c].sum(axis=2).mean(axis=1) for c in CATEGORIES}


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
    order = {name: i for i, name in enumerate((*CATEGORIES, "global", "local"))}
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
