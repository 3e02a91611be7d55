"""What the atoms of a trained cross-attention model attend to (docs/method.md §11.4).

The [CLS] analysis of this package (paper §4.4) asks which tokens the frozen encoder's summary vector reads.
For `crysmmnet_xattn` the question is the model's own: which tokens do a crystal's atoms attend to? For the
val-selected model of a run and its test materials, each atom's attention over its crystal's tokens (``models.
fusion.TokenCrossAttention``, averaged over heads) is summed per token category (the attention stage's
categories, stored per token by the `tokens` stage), averaged over the atoms and then over the materials, next
to the category's share of the tokens (uniform attention). For the first materials by id it draws the text word
by word coloured by the atoms' mean attention (``drawing.plot_words``, as the [CLS] figure) and a heatmap of
each atom's attention per category.
"""

from __future__ import annotations

import csv
import io as _stdio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crys_pipeline.attention.encoder import EncodedAttention, merge_words
from crys_pipeline.attention.tagging import CATEGORIES, SECTION

log = logging.getLogger(__name__)

#: Columns of the summary CSV.
COLUMNS = ["target", "variant", "seed", "category", "section", "n_materials", "share_mean", "share_std",
           "content_share_mean", "token_fraction_mean", "enrichment"]


@dataclass(frozen=True)
class MaterialAttention:
    """The cross-attention of one material's atoms.

    Attributes:
        material_id: the material.
        weights: float64 [A, T] attention of each atom over the T tokens, mean over heads (rows sum to 1).
        category: int8 [T] category code of each token (index into ``CATEGORIES``).
    """

    material_id: str
    weights: np.ndarray
    category: np.ndarray

    def shares(self) -> np.ndarray:
        """float64 [A, C]: each atom's attention per category."""
        out = np.zeros((self.weights.shape[0], len(CATEGORIES)))
        np.add.at(out.T, self.category.astype(np.int64), self.weights.T)  # [C, A] += per token
        return out


def collect(model: Any, loader: Any, categories: dict[str, np.ndarray]) -> list[MaterialAttention]:
    """Per material of `loader` the head-averaged attention of its atoms over its own tokens."""
    import torch

    out = []
    model.eval()
    with torch.no_grad():
        for batch in loader:
            _, _, weights, mask = model.graph_encoder.attend(batch)  # [N, M, T], [B, T]
            mean_heads = weights.mean(dim=1).double().numpy()  # [N, T]
            crystal = batch.batch.numpy()
            for b, mid in enumerate(batch.material_id):
                n_tokens = int(mask[b].sum())
                out.append(MaterialAttention(mid, mean_heads[crystal == b, :n_tokens], categories[mid]))
    return out


def summary_rows(items: list[MaterialAttention], meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Per category the share of the atoms' attention over the materials, beside its share of the tokens.

    Columns (``COLUMNS``): mean and std over materials of the atoms' mean share, the same with the special tokens
    left out, the share of tokens (special tokens left out) and the enrichment (content share / token share).
    """
    shares = np.stack([item.shares().mean(axis=0) for item in items])  # [n, C]
    special = CATEGORIES.index("special")
    content = shares / np.maximum(1 - shares[:, [special]], 1e-12)
    counts = np.stack([np.bincount(item.category.astype(np.int64), minlength=len(CATEGORIES)) for item in items])
    fraction = counts / np.maximum(counts.sum(1, keepdims=True) - counts[:, [special]], 1)
    rows = []
    for c, name in enumerate(CATEGORIES):
        own = name != "special"
        row = {"target": meta["target"], "variant": meta["variant"], "seed": meta["seed"], "category": name,
               "section": SECTION[name], "n_materials": len(items), "share_mean": float(shares[:, c].mean()),
               "share_std": float(shares[:, c].std(ddof=1)) if len(items) > 1 else float("nan"),
               "content_share_mean": float(content[:, c].mean()) if own else float("nan"),
               "token_fraction_mean": float(fraction[:, c].mean()) if own else float("nan")}
        row["enrichment"] = row["content_share_mean"] / row["token_fraction_mean"] if own and \
            row["token_fraction_mean"] > 0 else float("nan")
        rows.append(row)
    return rows


def _csv(rows: list[dict[str, Any]]) -> str:
    out = _stdio.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()} for row in rows)
    return out.getvalue()


def plot_summary(rows: list[dict[str, Any]], title: str, path: Path) -> None:
    """Horizontal bars: content share of the atoms' attention per category beside its share of tokens."""
    from matplotlib.figure import Figure

    shown = [r for r in rows if r["category"] != "special"]
    y = np.arange(len(shown))
    fig = Figure(figsize=(7.0, 0.32 * len(shown) + 1.6), layout="constrained")
    ax = fig.subplots()
    ax.barh(y - 0.2, [100 * r["content_share_mean"] for r in shown], 0.4, color="tab:red",
            label="atoms' cross-attention (special tokens left out)")
    ax.barh(y + 0.2, [100 * r["token_fraction_mean"] for r in shown], 0.4, color="grey", label="share of tokens")
    ax.set_yticks(y, [r["category"] for r in shown], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("% (mean over test materials)", fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title, fontsize=8, loc="left")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def plot_material_words(item: MaterialAttention, token_rows: dict[str, Any], title: str, path: Path) -> None:
    """The text word by word, each word coloured by the attention its pieces get from the crystal's atoms."""
    from crys_pipeline.attention.drawing import plot_words

    weights = item.weights.mean(axis=0)  # [A, T] -> [T]: mean over atoms
    enc = EncodedAttention(text=token_rows["text"], tokens=[""] * len(weights), offsets=token_rows["offsets"],
                           word_ids=token_rows["word_ids"], weights=weights[None, None, :], truncated=False)
    words = merge_words(enc)
    plot_words(words, weights=np.array([weights[list(w.tokens)].sum() for w in words]),
               is_global=[w.start < token_rows["global_len"] for w in words], text=enc.text,
               specials={"CLS": float(weights[0]), "SEP": float(weights[-1])}, title=title, path=path,
               bar_label="attention of the crystal's atoms per word (sum over its pieces, mean over atoms and heads)")


def plot_material_atoms(item: MaterialAttention, species: list[str], title: str, path: Path) -> None:
    """Heatmap: each atom's attention (mean over heads) per token category, in %."""
    from matplotlib.figure import Figure

    shares = 100 * item.shares()  # [A, C]
    labels = [f"{el}{i}" for i, el in enumerate(species)]
    fig = Figure(figsize=(0.62 * len(CATEGORIES) + 1.8, 0.28 * len(labels) + 1.9), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Reds", aspect="auto", vmin=0)
    for (i, j), value in np.ndenumerate(shares):
        ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=6,
                color="white" if value > 0.6 * shares.max() else "black")
    ax.set_xticks(range(len(CATEGORIES)), CATEGORIES, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    fig.colorbar(image, ax=ax, label="% of the atom's attention", shrink=0.8)
    ax.set_title(title, fontsize=8, loc="left")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def analyse_run(run_dir: Path, *, structures: Path, split: Path, graphs: Path, embeddings: Path, tokens: Path,
                materials: int, out_dir: Path) -> list[dict[str, Any]]:
    """Cross-attention of a run's val-selected model over its test materials: summary and figures into `out_dir`.

    Args:
        run_dir: a run of a variant reading all tokens (`crysmmnet_xattn`).
        structures: the run's structures table (species and formulas).
        split: its split file.
        graphs: its graph shard folder.
        embeddings: its embeddings HDF5.
        tokens: its token-states HDF5.
        materials: how many test materials (the first by id) get their two figures.
        out_dir: receives summary.csv, summary.png and materials/{id}.png, materials/{id}_atoms.png.

    Raises:
        ValueError: the run does not read every token.
        ArtifactError: the inputs are not the ones the run was trained on.
    """
    from crys_pipeline import io
    from crys_pipeline.predict import load_trained_model
    from crys_pipeline.train.data import load_training_data, make_loader
    from crys_pipeline.variants import VARIANTS

    trained = load_trained_model(run_dir)
    meta, spec = trained.meta, VARIANTS[trained.meta["variant"]]
    if spec.tokens != "all":
        raise ValueError(f"{run_dir}: variant {meta['variant']} does not read every token; the figures need them")
    data = load_training_data(structures, split=split, target=meta["target"], graphs=graphs, embeddings=embeddings,
                              text_view=spec.text_view, tokens=tokens, token_set=spec.tokens)
    if data.hashes != meta["data_hashes"]:
        changed = sorted(k for k in data.hashes if data.hashes[k] != meta["data_hashes"].get(k))
        raise io.ArtifactError(f"{run_dir}: trained on other {', '.join(changed)} than those given; rerun its "
                               "training job or give its inputs")
    states = io.read_tokens(tokens, items=("offsets", "word_ids", "category"))
    row_of = {mid: i for i, mid in enumerate(states.ids)}
    test = data.splits["test"]
    items = collect(trained.model, make_loader(test, 32), {m: states.of(row_of[m], "category") for m in test.ids})
    rows = summary_rows(items, meta)
    io.write_text(_csv(rows), out_dir / "summary.csv")
    what = f"{meta['variant']} seed {meta['seed']}, {meta['target']}"
    plot_summary(rows, f"{what}\natoms' cross-attention per token category, {len(items)} test materials",
                 out_dir / "summary.png")
    table = {r["material_id"]: r for r in io.read_parquet(structures, "structures",
                                                          columns=["material_id", "formula", "species"]).to_pylist()}
    for item in sorted(items, key=lambda i: i.material_id)[:materials]:
        row = row_of[item.material_id]
        token_rows = {"text": states.rows["text"][row], "global_len": int(states.rows["global_len"][row]),
                      "offsets": states.of(row, "offsets"), "word_ids": states.of(row, "word_ids")}
        head = f"{item.material_id} ({table[item.material_id]['formula']}, {item.weights.shape[0]} atoms), {what}"
        plot_material_words(item, token_rows, f"{head}: which words the atoms attend to",
                            out_dir / "materials" / f"{item.material_id}.png")
        plot_material_atoms(item, table[item.material_id]["species"], f"{head}: each atom's attention per "
                            "token category", out_dir / "materials" / f"{item.material_id}_atoms.png")
    log.info("%s: cross-attention of %d test materials -> %s", run_dir, len(items), out_dir)
    return rows
