"""Stage `splits`: train/val/test material-id lists per (source, target) and regime.

Two methods (docs/method.md §1.3-1.4):

* `official` (default): the JARVIS-Leaderboard / ALIGNN assignment carried in the structures
  table's `split_<target>` column. A material listed in two subsets by the benchmark (duplicate
  entries of dft_3d_2021, label like `train|test`) is kept in its first subset only.
* `random123`: ALIGNN's `get_id_train_val_test` reproduced bit for bit: indices 0..N-1 over the
  materials with a non-null target in snapshot order, shuffled in place by stdlib `random` after
  `random.seed(seed)`; train = head slice, val and test = tail slices.

The low-data regime `low20` keeps val and test identical to the full regime and trains on the first
`int(low20_train_ratio * N)` materials: for random123 the head of the same permutation, for official
the official train ids shuffled the same way. Each split file carries a sha256 `hash` of its three
lists, so a run names exactly which split it used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path
from typing import Any

from crys_pipeline.domain import train_domain
from crys_pipeline.io import read_meta, read_parquet, sha256_file, write_json
from crys_pipeline.schemas import split_column
from crys_pipeline.settings import SplitSettings, stamp

log = logging.getLogger(__name__)

SplitIds = tuple[list[int], list[int], list[int]]


def alignn_split_indices(
    total: int,
    *,
    seed: int,
    train_ratio: float | None = None,
    val_ratio: float | None = None,
    test_ratio: float | None = None,
    counts: tuple[int, int, int] | None = None,
) -> SplitIds:
    """Index lists (train, val, test) exactly as ALIGNN's `get_id_train_val_test`.

    Args:
        total: N, the number of materials after the missing-value filter.
        seed: stdlib `random.seed` value before the in-place shuffle.
        train_ratio: None means 1 - val - test.
        val_ratio: validation ratio; the count truncates (`int(ratio * N)`).
        test_ratio: test ratio; the count truncates (`int(ratio * N)`).
        counts: absolute (n_train, n_val, n_test) instead of the ratios.
    """
    if counts is None and (val_ratio is None or test_ratio is None):
        raise ValueError("alignn_split_indices needs val_ratio and test_ratio, or counts")
    if train_ratio is None and counts is None:
        train_ratio = 1.0 - val_ratio - test_ratio
    if counts is None:
        counts = (int(train_ratio * total), int(val_ratio * total), int(test_ratio * total))
    n_train, n_val, n_test = counts
    if n_train + n_val + n_test > total:
        raise ValueError(f"split sizes {counts} exceed the {total} available materials")
    ids = list(range(total))
    random.seed(seed)
    random.shuffle(ids)
    val = ids[-(n_val + n_test): -n_test] if n_test > 0 else ids[-(n_val + n_test):] if n_val else []
    test = ids[-n_test:] if n_test > 0 else []
    return ids[:n_train], val, test


def split_hash(split: dict[str, list[str]]) -> str:
    """sha256 over the three id lists (order-sensitive), first 16 hex digits."""
    blob = json.dumps([split["id_train"], split["id_val"], split["id_test"]]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def official_split(ids: list[str], labels: list[str | None]) -> dict[str, list[str]]:
    """Group ids by their official label (first label of a duplicate like `train|test`)."""
    out: dict[str, list[str]] = {"id_train": [], "id_val": [], "id_test": []}
    for mid, label in zip(ids, labels, strict=True):
        if label:
            out[f"id_{label.split('|')[0]}"].append(mid)
    return out


def low20_train(train_ids: list[str], *, n_total: int, ratio: float, seed: int) -> list[str]:
    """The low-data train list: the first int(ratio * N) of `train_ids` after a seeded stdlib shuffle."""
    order = list(train_ids)
    random.seed(seed)
    random.shuffle(order)
    return order[: min(len(order), int(ratio * n_total))]


def compute_splits(
    ids: list[str], *, labels: list[str | None], method: str, seed: int,
    ratios: tuple[float, float, float], low20_ratio: float,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(full, low20) split dicts for materials `ids` (target non-null, snapshot order)."""
    if method == "official":
        full = official_split(ids, labels)
        n_total = sum(len(v) for v in full.values())
        low = {**full, "id_train": low20_train(full["id_train"], n_total=n_total, ratio=low20_ratio,
                                               seed=seed)}
    elif method == "random123":
        n_total = len(ids)
        train, val, test = alignn_split_indices(n_total, seed=seed, train_ratio=ratios[0],
                                                val_ratio=ratios[1], test_ratio=ratios[2])
        full = {"id_train": [ids[i] for i in train], "id_val": [ids[i] for i in val],
                "id_test": [ids[i] for i in test]}
        head, _, _ = alignn_split_indices(n_total, seed=seed, train_ratio=low20_ratio, val_ratio=ratios[1],
                                          test_ratio=ratios[2])
        low = {**full, "id_train": [ids[i] for i in head]}
    else:
        raise ValueError(f"unknown split method {method!r}; expected official or random123")
    return full, low


def check_trainable(full: dict[str, Any], low: dict[str, Any], *, where: str, method: str) -> None:
    """Stop when the full regime has no training material; warn about other empty lists.

    Raises:
        ValueError: no train id; the message names `where` (file and target), the method and the counts.
    """
    counts = {name: len(full[f"id_{name}"]) for name in ("train", "val", "test")}
    text = f"{method} split {counts['train']} train, {counts['val']} val, {counts['test']} test"
    if not counts["train"]:
        raise ValueError(f"{where} has no training values: {text} of the {sum(counts.values())} materials with a "
                         "value; no model can be trained on it. Check the target's values and split labels in the "
                         "source, or leave the target out of the config")
    empty = [name for name, n in counts.items() if not n] + (["low20 train"] if not low["id_train"] else [])
    if empty:
        log.warning("%s: %s: no %s materials", where, text, " / ".join(empty))


def _train_domain(table: Any, target: str, train_ids: list[str]) -> dict[str, Any]:
    """`domain.train_domain` of the materials `train_ids` of a structures table."""
    wanted = set(train_ids)
    rows = [r for r in table.select(["material_id", "species", "lattice", target]).to_pylist()
            if r["material_id"] in wanted]
    return train_domain([r["species"] for r in rows], [r["lattice"] for r in rows], [r[target] for r in rows])


def make_splits(
    structures: Path, *, target: str, method: str, settings: SplitSettings, out_full: Path, out_low20: Path,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write the full and low20 split JSON files of one target.

    Each file holds id_train / id_val / id_test, counts, the target and its unit, the method, seed, regime,
    the number of materials with a non-null target (n_total), the span of the training materials
    (`train_domain`: elements, target and volume-per-atom ranges, for `predict`'s notes), the split hash
    and the structures file's sha256.
    """
    seed = settings.seed
    ratios = (settings.train_ratio, settings.val_ratio, settings.test_ratio)
    table = read_parquet(structures, "structures", columns=None)
    if target not in table.column_names:
        raise ValueError(f"{structures}: no target column {target!r}")
    values = table.column(target).to_pylist()
    keep = [i for i, v in enumerate(values) if v is not None]
    ids = [table.column("material_id")[i].as_py() for i in keep]
    all_labels = table.column(split_column(target)).to_pylist()
    labels = [all_labels[i] for i in keep]
    full, low = compute_splits(ids, labels=labels, method=method, seed=seed, ratios=ratios,
                               low20_ratio=settings.low20_train_ratio)
    check_trainable(full, low, where=f"{structures}: target {target!r}", method=method)
    unit = (read_meta(structures).get("units") or {}).get(target, "")
    for regime, split, out in (("full", full, out_full), ("low20", low, out_low20)):
        record = {**split, "target": target, "unit": unit, "method": method, "seed": seed, "regime": regime,
                  "train_domain": _train_domain(table, target, split["id_train"]), "params": stamp(settings),
                  "n_total": len(ids), "n_train": len(split["id_train"]), "n_val": len(split["id_val"]),
                  "n_test": len(split["id_test"]), "hash": split_hash(split),
                  "structures_sha256": sha256_file(structures)}
        write_json(record, out)
        log.info("%s %s/%s: %d train, %d val, %d test (hash %s)", target, method, regime, record["n_train"],
                 record["n_val"], record["n_test"], record["hash"])
    return full, low
