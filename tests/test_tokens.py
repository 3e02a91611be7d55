"""The token-states artifact (docs/method.md §11.1) and the cross-attention variants that read it.

Real MP crystals with their published robocrys texts (tests/train_helpers.mp_text_dataset: structures, graphs,
sections with one failed text, MiniLM embeddings at max length 128) and their token states made by the `tokens`
stage: layout, [CLS] rows against the embeddings, the tagged reduction, checksum and lineage refusals, and the
variant through training, resume and predict.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from train_helpers import killed_after_checkpoint, mp_text_dataset, write_split

from crys_pipeline import io, predict, tokens, train
from crys_pipeline.attention.tagging import CATEGORIES
from crys_pipeline.settings import EmbedSettings, ModelSettings, TokenSettings
from crys_pipeline.train.data import load_training_data

ENCODER = EmbedSettings(max_length=128, token_budget=4096, device="cpu")
SMALL = {"model": ModelSettings(hidden_features=16, alignn_layers=1, gcn_layers=1), "batch_size": 8, "epochs": 2,
         "device": "cpu", "threads": 1}


@pytest.fixture(scope="module")
def mp_tokens(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """mp_text_dataset plus its token states (all tokens) and a split."""
    work = tmp_path_factory.mktemp("mp_tokens")
    data = mp_text_dataset(work)
    data["work"], data["sections"] = work, work / "sections.parquet"
    data["tokens"] = work / "tokens.h5"
    data["stats"] = tokens.token_sections(data["sections"], out=data["tokens"], settings=ENCODER,
                                          tokens=TokenSettings())
    ids = data["ids"]
    data["split"] = write_split(work / "split.json", "e_form", [*ids[:-10], ids[-1]], ids[-10:-5], ids[-5:-1])
    return data


def test_layout_real_tokens_only_and_cls_row_of_the_embeddings(mp_tokens: dict) -> None:
    states = io.read_tokens(mp_tokens["tokens"], items=("states", "input_ids", "offsets", "word_ids", "category"))
    ids, cls, _ = io.read_embeddings(mp_tokens["embeddings"], "full")
    assert states.ids == ids and states.attrs["params"]["keep"] == "all" and states.attrs["dim"] == 384
    assert states.attrs["categories"] == list(CATEGORIES) and states.items["states"].dtype == np.float16
    n = states.rows["n_tokens"]
    assert states.items["states"].shape == (n.sum(), 384) and n[-1] == 0 and states.rows["status"][-1] == "timeout"
    for row in range(len(ids) - 1):  # every ok text: [CLS] ... [SEP], no padding, row 0 = the embeddings' row
        own = states.of(row, "input_ids")
        assert 2 < len(own) <= 128 and states.of(row, "word_ids")[0] == -1 == states.of(row, "word_ids")[-1]
        assert np.abs(states.of(row, "states")[0].astype(np.float32) - cls[row]).max() < 4e-3
    text, spans = states.rows["text"][0], states.of(0, "offsets")
    first_site = list(states.of(0, "category")).index(tokens.CODES["site"])
    assert text[slice(*spans[first_site])][0].isupper()  # an element symbol starts a `site` token
    assert mp_tokens["stats"]["tokens"] == int(n.sum()) and io.verify_tokens(mp_tokens["tokens"]) == 13


def test_tagged_file_holds_exactly_the_tagged_tokens(mp_tokens: dict, tmp_path: Path) -> None:
    tagged = tokens.token_sections(mp_tokens["sections"], out=tmp_path / "t.h5", settings=ENCODER,
                                   tokens=TokenSettings(keep="tagged"))
    small = io.read_tokens(tmp_path / "t.h5", items=("states", "category"))
    full = io.read_tokens(mp_tokens["tokens"], items=("states", "category"))
    for row in range(len(full.ids)):
        keep = tokens.keep_mask(full.of(row, "category"), "tagged")
        np.testing.assert_array_equal(small.of(row, "states"), full.of(row, "states")[keep])
    assert 0.4 < tagged["tokens"] / mp_tokens["stats"]["tokens"] < 0.9
    assert set(small.items["category"]) <= {tokens.CODES[c] for c in tokens.TAGGED}


def test_inspect_verifies_the_token_file(mp_tokens: dict, capsys: pytest.CaptureFixture) -> None:
    from crys_pipeline.cli import main

    assert main(["inspect", str(mp_tokens["tokens"])]) == 0
    assert "verified (layout and the sha256 of all 13 datasets)" in capsys.readouterr().out


def test_flipped_bytes_in_the_token_states_are_refused(mp_tokens: dict, tmp_path: Path) -> None:
    import h5py

    path = Path(shutil.copy(mp_tokens["tokens"], tmp_path / "tokens.h5"))
    with h5py.File(path, "r") as handle:
        offset = handle["states"].id.get_offset()
    data = bytearray(path.read_bytes())
    data[offset + 1000 : offset + 1016] = bytes(b ^ 0xFF for b in data[offset + 1000 : offset + 1016])
    path.write_bytes(bytes(data))
    with pytest.raises(io.ArtifactError, match=r"tokens.h5: corrupt .*'states' differs from its recorded sha256.*"
                       "delete it and rerun"):
        io.read_tokens(path)
    with pytest.raises(io.ArtifactError, match=r"\['states'\] differ from their recorded sha256"):
        io.verify_tokens(path)
    from crys_pipeline.cli import main

    assert main(["inspect", str(path)]) == 1


def _load(mp_tokens: dict, token_file: Path, token_set: str = "all", embeddings: Path | None = None):
    return load_training_data(mp_tokens["structures"], split=mp_tokens["split"], target="e_form",
                              graphs=mp_tokens["graphs"], embeddings=embeddings or mp_tokens["embeddings"],
                              text_view="full", tokens=token_file, token_set=token_set)


def _other_sections(mp_tokens: dict, path: Path, **meta) -> Path:
    """The sections table with one text changed (and its metadata updated by `meta`)."""
    table = io.read_parquet(mp_tokens["sections"], "sections")
    full = table.column("full").to_pylist()
    full[0] = full[0] + " Changed."
    old = io.read_meta(mp_tokens["sections"])
    io.write_parquet(table.set_column(table.column_names.index("full"), "full", pa.array(full)), path,
                     kind="sections", params=old.get("params", {}),
                     extra={"source": old["source"], "versions": {}, "counts": {}, **meta})
    return path


def test_lineage_refusals(mp_tokens: dict, tmp_path: Path) -> None:
    """Token states of other texts, another encoder, other structures or only the tagged tokens are refused."""
    other = _other_sections(mp_tokens, tmp_path / "other.parquet")
    tokens.token_sections(other, out=tmp_path / "texts.h5", settings=ENCODER, tokens=TokenSettings())
    with pytest.raises(io.ArtifactError, match=r"texts\.h5: made from other texts than the embeddings"):
        _load(mp_tokens, tmp_path / "texts.h5")
    shorter = EmbedSettings(max_length=64, token_budget=4096, device="cpu")
    tokens.token_sections(mp_tokens["sections"], out=tmp_path / "enc.h5", settings=shorter, tokens=TokenSettings())
    with pytest.raises(io.ArtifactError, match=r"enc\.h5: made with max_length=64, the embeddings with 128"):
        _load(mp_tokens, tmp_path / "enc.h5")
    stale = _other_sections(mp_tokens, tmp_path / "stale.parquet", structures_sha256="0" * 64)
    with pytest.raises(io.ArtifactError, match=r"stale\.parquet: made from another structures file"):
        tokens.token_sections(stale, out=tmp_path / "x.h5", settings=ENCODER, tokens=TokenSettings(),
                              structures=mp_tokens["structures"])
    tokens.token_sections(mp_tokens["sections"], out=tmp_path / "tagged.h5", settings=ENCODER,
                          tokens=TokenSettings(keep="tagged"))
    with pytest.raises(io.ArtifactError, match=r"tagged\.h5: holds only the tagged tokens, the model reads all"):
        _load(mp_tokens, tmp_path / "tagged.h5")
    data = _load(mp_tokens, tmp_path / "tagged.h5", token_set="tagged")
    assert data.embed_attrs["tokens"]["token_set"] == "tagged" and "tokens" in data.hashes


def test_tagged_variant_reads_the_tagged_tokens_of_a_full_file(mp_tokens: dict) -> None:
    full, tagged = _load(mp_tokens, mp_tokens["tokens"]), _load(mp_tokens, mp_tokens["tokens"], "tagged")
    assert [len(t) for t in tagged.splits["train"].tokens] < [len(t) for t in full.splits["train"].tokens]
    assert full.splits["train"].ids == tagged.splits["train"].ids
    assert full.splits["train"].tokens[0].shape[1] == 384


def test_cross_attention_variant_trains_resumes_and_predicts(mp_tokens: dict, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = train.TrainConfig(target="e_form", variant="crysmmnet_xattn", seed=0, **SMALL)
    args = {"split": mp_tokens["split"], "graphs": mp_tokens["graphs"], "embeddings": mp_tokens["embeddings"],
            "tokens": mp_tokens["tokens"], "cfg": cfg}
    whole = train.train(mp_tokens["structures"], out_dir=tmp_path / "whole", **args)
    assert math.isfinite(whole["test_mae"]) and whole["dropped"][0]["reason"].startswith("text timeout")
    meta = io.read_model_json(tmp_path / "whole")
    assert meta["embedding_attrs"]["tokens"]["token_set"] == "all" and "tokens" in meta["data_hashes"]
    assert meta["graph_encoder"]["fusion"] == "cross_attention" and meta["config"]["fusion_heads"] == 4
    with killed_after_checkpoint(monkeypatch, epoch=1):
        train.train(mp_tokens["structures"], out_dir=tmp_path / "resumed", **args)
    train.train(mp_tokens["structures"], out_dir=tmp_path / "resumed", **args)
    a, b = torch.load(tmp_path / "whole/model.pt"), torch.load(tmp_path / "resumed/model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="needs graphs=True, embeddings=True, tokens=True"):
        train.train(mp_tokens["structures"], out_dir=tmp_path / "no", **{**args, "tokens": None})
    trained = predict.load_trained_model(tmp_path / "whole")
    rows = {r["material_id"]: r for r in io.read_parquet(mp_tokens["structures"], "structures").to_pylist()}
    from crys_pipeline.ingest import row_to_structure

    folder = tmp_path / "inputs"
    folder.mkdir()
    for mid in mp_tokens["ids"][:2]:
        row_to_structure(rows[mid]).to(filename=str(folder / f"{mid}.vasp"), fmt="poscar")
    crystals, _ = predict.predict_files([trained.run_dir], paths=[folder])
    assert [c.error for c in crystals] == ["", ""]
    assert all(math.isfinite(c.predictions["crysmmnet_xattn/full/seed0"]) for c in crystals)
