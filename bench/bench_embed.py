"""Text embedding speed: CrysMMNet's per-sample loop vs the `embed` stage, same real texts, one run.

Texts: the first N published Robocrystallographer descriptions of
../shared/data/robocrys_text_reference_mp.jsonl, each as three variants (full; global = first two
sentences; local = the rest), i.e. 3N texts. Both sides share one loaded encoder (load time is
excluded from both) and the same settings (max_length 512 head truncation, [CLS] pooling).

Reference (CrysMMNet `src/models/alignn.py` forward, one text at a time): MatSciBERT's normalize()
with its per-character loop, tokenizer(text, padding=True, truncation=True, max_length=512), the model
under torch.no_grad, last_hidden_state[:, 0].
Ours: `crys_pipeline.embed.embed_sections` on a sections table of the same texts, writing the HDF5
(length-sorted token-budget batches, inference_mode, chunked resumable writes).

Every cached row is compared with the reference's on-the-fly encoding of the same text (cosine).
`--precision bfloat16` runs the stage under bf16 autocast (`embed.precision`); the reference loop stays float32.
With --repeats R each side's time is the minimum over R rounds (rounds alternate the two sides, so
load changes on a shared machine hit both alike).

Prints both timings, the loop's rate of encoder arithmetic beside a float32 matmul's on the same device (how
much a float32 stage could gain at most by batching alone), and, as its last line,
`embed speedup: X.XXx (min cosine C over K texts)`.

Usage: .venv/bin/python bench/bench_embed.py [--n 40] [--repeats 1] [--device cpu] [--threads 2] [--precision P]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from crys_pipeline import embed, io
from crys_pipeline.devices import set_threads
from crys_pipeline.normalize import vocab_mappings
from crys_pipeline.schemas import TEXT_VIEWS
from crys_pipeline.settings import PRECISIONS, EmbedSettings

TEXTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "robocrys_text_reference_mp.jsonl"


def reference_normalize(text: str, mappings: dict[str, str], norm: object) -> str:
    """MatSciBERT's normalize() as CrysMMNet runs it (per-character string concatenation)."""
    out = []
    for line in [norm.normalize_str(s) for s in text.split("\n")]:
        norm_s = ""
        for c in line:
            norm_s += mappings.get(c, " ")
        out.append(norm_s)
    return "\n".join(out)


def reference_encode(encoder: embed.TextEncoder, texts: list[str]) -> np.ndarray:
    """CrysMMNet's path, one text per forward: normalise, tokenise, BERT, [CLS]."""
    import torch
    from tokenizers.normalizers import BertNormalizer

    norm = BertNormalizer(lowercase=False, strip_accents=True, clean_text=True, handle_chinese_chars=True)
    mappings = vocab_mappings()
    rows = []
    for text in texts:
        inputs = encoder.tokenizer([reference_normalize(text, mappings, norm)], padding=True, truncation=True,
                                   max_length=encoder.settings.max_length, return_tensors="pt")
        with torch.no_grad():
            hidden = encoder.model(**{k: v.to(encoder.device) for k, v in inputs.items()}).last_hidden_state
        rows.append(hidden[:, 0, :].float().cpu().numpy()[0])
    return np.stack(rows)


def write_sections(n: int, path: Path) -> dict[str, list[str]]:
    """A sections table of the first n reference descriptions; returns the texts per variant."""
    rows = []
    for line in TEXTS.read_text().splitlines()[:n]:
        rec = json.loads(line)
        parts = rec["description"].split(". ")
        rows.append({"material_id": rec["material_id"], "status": "ok", "error": "", "full": rec["description"],
                     "global": ". ".join(parts[:2]) + ".", "local": ". ".join(parts[2:])})
    io.write_parquet(pa.Table.from_pylist(rows), path, kind="sections", params={},
                     extra={"source": "robocrys_text_reference_mp", "versions": {}, "counts": {}})
    return {v: [r[v] for r in rows] for v in TEXT_VIEWS}


def run_ours(encoder: embed.TextEncoder, sections: Path, work: Path, round_no: int) -> tuple[float, Path]:
    out = work / f"round{round_no}.h5"
    start = time.perf_counter()
    embed.embed_sections(sections, out=out, settings=encoder.settings, encoder=encoder)
    return time.perf_counter() - start, out


def forward_flops(encoder: embed.TextEncoder, texts: list[str]) -> float:
    """Multiply-add FLOPs of the encoder layers over the texts, unpadded (QKVO, attention, FFN per token)."""
    cfg = encoder.model.config
    d, f = cfg.hidden_size, cfg.intermediate_size
    lengths = np.array([len(ids) for ids in encoder.tokenize(texts).input_ids], dtype=np.float64)
    per_layer = 2 * (4 * lengths * d * d + 2 * lengths * d * f + 2 * lengths**2 * d)
    return float(cfg.num_hidden_layers * per_layer.sum())


def matmul_gflops(encoder: embed.TextEncoder, rounds: int = 100) -> float:
    """GFLOP/s of one float32 [512, d] x [d, 4d] matmul (the FFN's shape) on the encoder's device."""
    import torch

    d = encoder.model.config.hidden_size
    a = torch.randn(512, d, device=encoder.device)
    b = torch.randn(d, 4 * d, device=encoder.device)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(rounds):
        c = a @ b
    float(c[0, 0])  # waits for the device
    return 2 * 512 * d * 4 * d * rounds / (time.perf_counter() - start) / 1e9


def main() -> None:
    """Run the benchmark and print the speedup as the last line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="materials (3 texts each)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default=EmbedSettings().model)
    parser.add_argument("--precision", default=EmbedSettings().precision, choices=PRECISIONS,
                        help="the stage's embed.precision (the reference loop is always float32)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    set_threads(args.threads)
    encoder = embed.TextEncoder(EmbedSettings(model=args.model, device=args.device, precision=args.precision))
    work = Path(tempfile.mkdtemp(prefix="bench_embed_"))
    texts = write_sections(args.n, work / "sections.parquet")
    flat = [t for v in TEXT_VIEWS for t in texts[v]]
    ref_times, our_times = [], []
    for round_no in range(args.repeats):
        start = time.perf_counter()
        reference = reference_encode(encoder, flat)
        ref_times.append(time.perf_counter() - start)
        seconds, out = run_ours(encoder, work / "sections.parquet", work, round_no)
        our_times.append(seconds)
    cached = np.concatenate([io.read_embeddings(out, v)[1] for v in TEXT_VIEWS])
    norms = np.linalg.norm(cached, axis=1) * np.linalg.norm(reference, axis=1)
    min_cos = float(((cached * reference).sum(1) / norms).min())
    ref_t, our_t = min(ref_times), min(our_times)
    print(f"device {encoder.device}, model {args.model}, {len(flat)} texts, threads {args.threads}, "
          f"stage precision {encoder.compute_dtype}")
    print(f"reference per-sample loop: {ref_t:.2f} s ({len(flat) / ref_t:.1f} texts/s, "
          f"{forward_flops(encoder, flat) / ref_t / 1e9:.0f} GFLOP/s of encoder arithmetic; "
          f"a float32 FFN-shaped matmul runs at {matmul_gflops(encoder):.0f} GFLOP/s here)")
    print(f"embed stage (HDF5 written): {our_t:.2f} s ({len(flat) / our_t:.1f} texts/s)")
    status = "ok" if min_cos > 0.9999 else "MISMATCH"
    print(f"embed speedup: {ref_t / our_t:.2f}x (min cosine {min_cos:.6f} over {len(flat)} texts, {status})")


if __name__ == "__main__":
    main()
