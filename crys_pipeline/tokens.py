"""Stage `tokens`: the frozen encoder's last-layer state of every real token of each full text (docs/method.md §11.1).

The cross-attention fusion (`crysmmnet_xattn`) lets the atoms attend to the tokens of the description, so it
needs the whole last hidden state of the encoder, not only its [CLS] row. This stage computes it once, with the
encoder of the `embed` stage run exactly as there (normaliser, tokenizer, head truncation, precision), and
stores per material only its real tokens, in float16, with each token's id, character span and word in the
normalised text and its category by the attention stage's rules (`attention.tagging`). `keep: tagged` stores
only the tokens of the categories in ``TAGGED`` (the reduction for paper scale). The layout is
``schemas.TOKENS``; the file records the encoder, `keep`, and the sections and structures it was made from.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crys_pipeline import io
from crys_pipeline.attention.tagging import CATEGORIES, SectionText, char_categories, section_text
from crys_pipeline.schemas import SCHEMA_VERSION, STATUS_OK, TEXT_VIEWS, TOKENS
from crys_pipeline.settings import EmbedSettings, TokenSettings, stamp

log = logging.getLogger(__name__)

#: Categories kept by `keep: tagged`: the tokens that name something (docs/method.md §11.1). Template words
#: (global_other, local_other), punctuation and [CLS]/[SEP] are left out.
TAGGED = ("formula", "mineral", "crystal_system", "space_group", "dimensionality", "site", "geometry",
          "bond_length", "number")
#: Category codes of the file: the index into ``attention.tagging.CATEGORIES`` (stored as attribute `categories`).
CODES = {name: code for code, name in enumerate(CATEGORIES)}


def keep_mask(category: np.ndarray, keep: str) -> np.ndarray:
    """Boolean [T]: which tokens of category codes `category` [T] the token set `keep` (all | tagged) holds."""
    if keep == "all":
        return np.ones(len(category), dtype=bool)
    if keep != "tagged":
        raise ValueError(f"unknown token set {keep!r}; choose all or tagged")
    return np.isin(category, [CODES[name] for name in TAGGED])


@dataclass(frozen=True)
class TextTokens:
    """The tokens of one text as the encoder sees it, before their states are computed.

    Attributes:
        text: the normalised text (offsets index into it).
        global_len: characters of `text` in the global section.
        input_ids: int32 [T] ids, [CLS]/[SEP] included, head-truncated to max_length.
        offsets: int32 [T, 2] character span of each token ((0, 0) for special tokens).
        word_ids: int32 [T] word of each token, -1 for special tokens.
        category: int8 [T] category code (``CODES``).
        token_count: untruncated number of tokens, special tokens included.
    """

    text: str
    global_len: int
    input_ids: np.ndarray
    offsets: np.ndarray
    word_ids: np.ndarray
    category: np.ndarray
    token_count: int

    @property
    def truncated(self) -> bool:
        """Whether the text lost its tail to the head truncation."""
        return self.token_count > len(self.input_ids)


def tokenize(encoder: Any, items: list[SectionText]) -> list[TextTokens]:
    """Tokens, spans, words and categories of each text, with exactly the ids the `embed` stage encodes.

    Args:
        encoder: an `embed.TextEncoder` (its normaliser, fast tokenizer and max_length).
        items: the texts with the length of their global section.

    Raises:
        RuntimeError: the offsets tokenisation does not give `TextEncoder.tokenize`'s ids (it always should).
    """
    norms = [encoder.normalize(item.text) for item in items]
    reference = encoder.tokenize([item.text for item in items])
    enc = encoder.tokenizer(norms, return_offsets_mapping=True, truncation=True,
                            max_length=encoder.settings.max_length, verbose=False)
    out = []
    for i, (item, norm) in enumerate(zip(items, norms, strict=True)):
        ids = np.asarray(enc["input_ids"][i], dtype=np.int32)
        if not np.array_equal(ids, reference.input_ids[i]):
            raise RuntimeError(f"{item.material_id}: the offsets tokenisation differs from the embed stage's")
        offsets = np.asarray(enc["offset_mapping"][i], dtype=np.int32).reshape(-1, 2)
        word_ids = np.array([-1 if w is None else w for w in enc.word_ids(i)], dtype=np.int32)
        labels = char_categories(norm, item.global_len)
        names = ["special" if w < 0 or s >= len(labels) else labels[s]
                 for w, s in zip(word_ids, offsets[:, 0], strict=True)]
        out.append(TextTokens(norm, item.global_len, ids, offsets, word_ids,
                              np.array([CODES[n] for n in names], dtype=np.int8), int(reference.token_counts[i])))
    return out


def encode(encoder: Any, texts: list[TextTokens], keep: str) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(index into `texts`, its items per ``schemas.TOKENS.item_datasets``) of every text, kept tokens only.

    The states come from `TextEncoder.token_states` (length-sorted token-budget batches), so texts arrive
    longest first, not in order.
    """
    for batch, states in encoder.token_states([t.input_ids for t in texts]):
        for i, state in zip(batch, states, strict=True):
            text = texts[i]
            keep_rows = keep_mask(text.category, keep)
            yield int(i), {"states": state[keep_rows], "input_ids": text.input_ids[keep_rows],
                           "offsets": text.offsets[keep_rows], "word_ids": text.word_ids[keep_rows],
                           "category": text.category[keep_rows]}


def _rows(sections: Path, encoder: Any, keep: str) -> tuple[dict[str, list], list[TextTokens | None]]:
    """The row datasets and, per material, its tokens (None for a failed description), in the table's order."""
    rows: dict[str, list] = {name: [] for name in TOKENS.row_datasets}
    texts: list[TextTokens | None] = []
    columns = ["material_id", "status", "error", *TEXT_VIEWS]
    table = io.read_parquet(sections, "sections", columns=columns).to_pylist()
    ok = [r for r in table if r["status"] == STATUS_OK]
    tokenized = iter(tokenize(encoder, [section_text(r, "full", encoder.normalize) for r in ok]))
    for row in table:
        text = next(tokenized) if row["status"] == STATUS_OK else None
        texts.append(text)
        kept = int(keep_mask(text.category, keep).sum()) if text else 0
        values = {"material_id": row["material_id"], "status": row["status"], "error": row["error"] or "",
                  "text": text.text if text else "", "global_len": text.global_len if text else 0,
                  "n_tokens": kept, "token_count": text.token_count if text else 0,
                  "truncated": bool(text and text.truncated)}
        for name, value in values.items():
            rows[name].append(value)
    return rows, texts


def _stats(rows: dict[str, list], dim: int) -> dict[str, Any]:
    """Token counts and bytes per material (the size documented in docs/method.md §11.1)."""
    ok = np.array([s == STATUS_OK for s in rows["status"]])
    kept = np.asarray(rows["n_tokens"], dtype=np.float64)[ok]
    per_token = 2 * dim + sum(np.dtype(dtype).itemsize * max(width, 1)
                              for name, (dtype, width) in TOKENS.item_datasets.items() if name != "states")
    return {"materials": int(ok.sum()), "tokens": int(kept.sum()), "tokens_mean": float(kept.mean()) if kept.size
            else 0.0, "bytes_per_token": int(per_token),
            "bytes_per_material": float(kept.mean() * per_token) if kept.size else 0.0,
            "truncated": int(np.sum(rows["truncated"]))}


def token_sections(
    sections: Path, *, out: Path, settings: EmbedSettings, tokens: TokenSettings, threads: int = 0,
    structures: Path | None = None,
) -> dict[str, Any]:
    """Write the token states of every material's full text to `out` (layout ``schemas.TOKENS``).

    Args:
        sections: `results/text/{source}/sections.parquet`.
        out: `results/tokens/{source}.h5`, written all or nothing.
        settings: the `embed` stage's encoder and how it runs (pooling and chunk size do not apply).
        tokens: which tokens to store (`keep`).
        threads: torch intra-op threads (0 = torch default).
        structures: the structures table the sections must have been made from (checked when given).

    Returns:
        the size statistics stored in the file (`stats`).
    """
    from tqdm import tqdm

    from crys_pipeline.devices import set_threads
    from crys_pipeline.embed import TextEncoder

    set_threads(threads)
    sections_meta = io.read_meta(sections)
    if structures is not None:
        io.check_lineage(structures, {sections: sections_meta.get("structures_sha256")})
    encoder = TextEncoder(settings)
    rows, texts = _rows(sections, encoder, tokens.keep)
    todo = [i for i, t in enumerate(texts) if t is not None]
    stats = _stats(rows, encoder.dim)
    log.info("%d texts, %d tokens kept (%s), %.0f bytes per material", len(todo), stats["tokens"], tokens.keep,
             stats["bytes_per_material"])
    params = {**encoder.params(), "keep": tokens.keep}
    params.pop("pooling")
    inputs = {"sections_sha256": io.sha256_file(sections), "sections_params": sections_meta.get("params", {}),
              "structures_sha256": sections_meta.get("structures_sha256")}

    def fill(writer: io.TokenFileWriter) -> dict[str, Any]:  # a failed description has no tokens to write
        start = time.perf_counter()
        with tqdm(total=len(todo), unit="text", desc="tokens", disable=not sys.stderr.isatty()) as bar:
            for i, items in encode(encoder, [texts[i] for i in todo], tokens.keep):
                writer.write(todo[i], items)
                bar.update(1)
        log.info("encoded %d texts in %.1f s", len(todo), time.perf_counter() - start)
        return {**encoder.info(), "keep": tokens.keep, "categories": list(CATEGORIES), "dtype": "float16",
                "stats": stats, "settings": {**stamp(settings), **stamp(tokens)}, "schema_version": SCHEMA_VERSION}

    io.write_token_file(out, rows=rows, dim=encoder.dim, params=params, inputs=inputs, fill=fill)
    return stats


#: Encoder params the token states and the [CLS] embeddings of one model must share.
SHARED_ENCODER = ("model", "revision", "max_length", "normalizer")


def _check_against_embeddings(path: Path, attrs: dict[str, Any], embed_attrs: dict[str, Any]) -> None:
    """Raise ArtifactError unless the token states come from the texts and encoder of the [CLS] embeddings."""
    mine, theirs = attrs["inputs"].get("sections_sha256"), (embed_attrs.get("inputs") or {}).get("sections_sha256")
    if mine != theirs:
        raise io.ArtifactError(f"{path}: made from other texts than the embeddings (sections sha256 "
                               f"{str(mine)[:12]}... vs {str(theirs)[:12]}...): one of the two is stale; delete it "
                               "and rerun the stage that makes it")
    for key in SHARED_ENCODER:
        if attrs["params"].get(key) != (embed_attrs.get("params") or {}).get(key):
            raise io.ArtifactError(f"{path}: made with {key}={attrs['params'].get(key)!r}, the embeddings with "
                                   f"{(embed_attrs.get('params') or {}).get(key)!r}; delete it and rerun the stage "
                                   "that makes it")


def read_token_states(path: Path, token_set: str | None,
                      embed_attrs: dict[str, Any]) -> tuple[dict[str, int], Any, dict[str, Any]]:
    """The token states a model reads: (row of every usable material id, row -> float16 [T, D], file attributes).

    Args:
        path: `results/tokens/{source}.h5`.
        token_set: `all` or `tagged` (a variant's ``tokens``): the file's tokens, or those of ``TAGGED``.
        embed_attrs: attributes of the [CLS] embeddings read with them (``io.read_embeddings``).

    Raises:
        ArtifactError: the file is damaged, made from other texts or with another encoder than the embeddings,
            or holds only the tagged tokens when all are asked for.
    """
    states = io.read_tokens(path, items=("states", "category"))
    file_set = states.attrs["params"].get("keep")
    if token_set == "all" and file_set != "all":
        raise io.ArtifactError(f"{path}: holds only the {states.attrs['params'].get('keep')} tokens, the model reads "
                               "all: set tokens.keep: all and rerun the tokens stage")
    _check_against_embeddings(path, states.attrs, embed_attrs)
    rows = {mid: i for i, (mid, status) in enumerate(zip(states.ids, states.rows["status"], strict=True))
            if status == STATUS_OK}

    def of(row: int) -> np.ndarray:  # a view into the memory-mapped file unless tokens are left out
        values = states.of(row, "states")
        return values[keep_mask(states.of(row, "category"), token_set)] if token_set != file_set else values

    attrs = {k: states.attrs[k] for k in ("params", "inputs", "model", "revision", "max_length", "normalizer",
                                          "dim", "keep", "stats") if k in states.attrs}
    return rows, of, {**attrs, "token_set": token_set}
