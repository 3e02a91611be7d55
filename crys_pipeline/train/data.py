"""Training data: graph shards + cached text embeddings + one target, joined by material id per split.

`load_training_data` reads the split JSON, the target column of the structures table, the graph
shards (graph variants) and one text view of the embeddings file (variants with text), and joins them
by material id **after** the split (docs/method.md §1.2): a split member whose target is null, whose graph
failed or whose text failed upstream (or is missing) is dropped and listed with its reason, never
silently. An ok material with an empty text section keeps its (empty-string) embedding.
`CrystalDataset` turns one split into torch_geometric `Data` items (z, edge_index, edge_vec, y,
text_emb, material_id, and for cross-attention variants the token states `tokens` [T, D] with `n_tokens`); the
standard PyG collation batches them (the model builds the line graph inside its forward pass). Text-only
variants yield items without nodes. Material ids travel with every batch (`batch.material_id`), so predictions
can never be misaligned with their targets.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from crys_pipeline import io
from crys_pipeline.io import GraphArrays
from crys_pipeline.tokens import read_token_states

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")



@dataclass
class SplitData:
    """The usable members of one split, in split-file order.

    Attributes:
        ids: material ids.
        y: float64 [n] target values.
        graphs: per-material graph arrays, or None for text-only variants.
        text: float32 [n, D] cached text embeddings, or None for graph-only variants.
        tokens: per material its float16 [T_i, D] token states (cross-attention variants), else None.
    """

    ids: list[str]
    y: np.ndarray
    graphs: list[GraphArrays] | None
    text: np.ndarray | None
    tokens: list[np.ndarray] | None = None


@dataclass
class TrainingData:
    """Everything a training job reads, joined and split.

    Attributes:
        splits: SplitData per split name (train / val / test).
        dropped: one {material_id, split, reason} per split member that cannot be used.
        split_meta: the split file's target, unit, method, regime, seed, hash and training domain.
        source: the structures table's source name.
        graph_meta: metadata of the graph shards ({} when not used).
        embed_attrs: attributes of the embeddings file ({} when not used).
        hashes: sha256 of every input file (graph shards combined into one digest).
    """

    splits: dict[str, SplitData]
    dropped: list[dict[str, str]]
    split_meta: dict[str, Any]
    source: str
    graph_meta: dict[str, Any] = field(default_factory=dict)
    embed_attrs: dict[str, Any] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)


def _graph_shards(graphs: Path) -> list[Path]:
    shards = sorted(Path(graphs).glob("shard-*.parquet"))
    if not shards:
        raise FileNotFoundError(f"{graphs}: no graph shards")
    return shards


def input_hashes(
    structures: Path, *, split: Path, graphs: Path | None, embeddings: Path | None, tokens: Path | None = None
) -> dict[str, str]:
    """sha256 of every input; the graph shards are combined (sorted by name) into one digest."""
    hashes = {"structures": io.sha256_file(structures), "split": io.sha256_file(split)}
    if graphs is not None:
        digest = hashlib.sha256()
        for shard in _graph_shards(graphs):
            digest.update(f"{shard.name}:{io.sha256_file(shard)}\n".encode())
        hashes["graphs"] = digest.hexdigest()
    if embeddings is not None:
        hashes["embeddings"] = io.sha256_file(embeddings)
    if tokens is not None:
        hashes["tokens"] = io.sha256_file(tokens)
    return hashes


def _load_graphs(graphs: Path) -> tuple[dict[str, GraphArrays], dict[str, str], dict[str, Any]]:
    """(ok graphs by id, failure reason by id, shard metadata)."""
    table = io.read_graph_dir(graphs)
    failures = {
        mid: f"graph {status}: {error}"
        for mid, status, error in zip(
            table.column("material_id").to_pylist(), table.column("status").to_pylist(),
            table.column("error").to_pylist(), strict=True,
        )
        if status != "ok"
    }
    return io.decode_graphs(table), failures, io.read_meta(_graph_shards(graphs)[0])


def _check_ids(path: Path, ids: list[str], structures: Path, structure_ids: set[str]) -> None:
    """Every stage keeps one row per structure: other ids mean the file belongs to another structures table."""
    if set(ids) != structure_ids:
        missing, extra = sorted(structure_ids - set(ids)), sorted(set(ids) - structure_ids)
        raise io.ArtifactError(f"{path}: its material ids are not those of {structures} ({len(missing)} missing, "
                               f"e.g. {missing[:3]}; {len(extra)} foreign, e.g. {extra[:3]}); delete it and rerun "
                               "its stage")


def _load_targets(structures: Path, target: str) -> tuple[dict[str, float | None], str]:
    """({id: target value or None}, source name) from the structures table."""
    meta = io.read_meta(structures)
    if target not in meta.get("targets", []):
        raise ValueError(f"{structures}: target {target!r} not in {meta.get('targets')}")
    table = io.read_parquet(structures, "structures", columns=["material_id", target])
    values = dict(zip(table.column("material_id").to_pylist(), table.column(target).to_pylist(), strict=True))
    return values, meta["source"]


def _drop_reason(
    mid: str,
    *,
    targets: dict[str, float | None],
    graphs: dict[str, GraphArrays] | None,
    graph_failures: dict[str, str],
    text_rows: dict[str, int] | None,
    text_failures: dict[str, str],
) -> str | None:
    """Why split member `mid` cannot be used (None when it can); the earliest failing stage wins."""
    if mid not in targets:
        return "not in structures table"
    if targets[mid] is None:
        return "target missing"
    if graphs is not None and mid not in graphs:
        return graph_failures.get(mid, "graph missing")
    if text_rows is not None and mid not in text_rows:
        return text_failures.get(mid, "embedding missing")
    return None


def _load_text(embeddings: Path, view: str) -> tuple[dict[str, int], np.ndarray, dict[str, str], dict[str, Any]]:
    """(row of every usable id, matrix [N, D], failure reason by id, file attributes).

    Rows whose text failed upstream (describe timeout or error) carry a placeholder embedding in the
    file; they are not usable and get their upstream status and error as the reason.
    """
    ids, matrix, attrs = io.read_embeddings(embeddings, view)
    flags = io.read_embedding_flags(embeddings, view)
    rows, failures = {}, {}
    for row, (mid, status, error) in enumerate(zip(ids, flags["status"], flags["error"], strict=True)):
        if status == "ok":
            rows[mid] = row
        else:
            failures[mid] = f"text {status}: {error}"
    return rows, matrix, failures, attrs


def load_training_data(
    structures: Path,
    *,
    split: Path,
    target: str,
    graphs: Path | None = None,
    embeddings: Path | None = None,
    text_view: str | None = None,
    tokens: Path | None = None,
    token_set: str | None = None,
) -> TrainingData:
    """Join targets, graphs, embeddings and token states over the members of a split file.

    Args:
        structures: results/structures/{source}.parquet (target values).
        split: results/splits/{source}/{target}/{regime}.json.
        target: property name (a target column of the structures table).
        graphs: graph shard folder, or None for text-only variants.
        embeddings: embeddings HDF5, or None for graph-only variants.
        text_view: `full`, `global` or `local`; required with `embeddings`.
        tokens: token-states HDF5 (cross-attention variants; needs `embeddings` of the same texts and encoder).
        token_set: which of its tokens to use, `all` or `tagged` (``tokens.read_token_states``).

    Raises:
        ValueError: the split belongs to another target, or `embeddings` is given without a text view.
        ArtifactError: the split, graphs or embeddings were made from another structures file (stale or
            swapped), or the embeddings do not hold one row per structure.
    """
    split_rec = io.read_json(split)
    if split_rec.get("target") != target:
        raise ValueError(f"{split}: split of target {split_rec.get('target')!r}, not {target!r}")
    if (embeddings is None) != (text_view is None):
        raise ValueError("embeddings and text_view go together")
    targets, source = _load_targets(structures, target)
    graph_arrays, graph_failures, graph_meta = _load_graphs(graphs) if graphs is not None else (None, {}, {})
    text_rows, matrix, text_failures, embed_attrs = None, None, {}, {}
    if embeddings is not None:
        text_rows, matrix, text_failures, embed_attrs = _load_text(embeddings, text_view)
    token_rows, token_states = None, None
    if tokens is not None:
        token_rows, token_states, embed_attrs["tokens"] = read_token_states(tokens, token_set, embed_attrs)
    hashes = input_hashes(structures, split=split, graphs=graphs, embeddings=embeddings, tokens=tokens)
    io.check_lineage(structures, {
        split: split_rec.get("structures_sha256"), **({graphs: graph_meta.get("structures_sha256")} if graphs else {}),
        **({embeddings: (embed_attrs.get("inputs") or {}).get("structures_sha256")} if embeddings else {}),
    }, hashes["structures"])
    if embeddings is not None:
        _check_ids(embeddings, [*text_rows, *text_failures], structures, set(targets))
    splits, dropped = {}, []
    for name in SPLITS:
        keep = []
        for mid in split_rec[f"id_{name}"]:
            reason = _drop_reason(mid, targets=targets, graphs=graph_arrays, graph_failures=graph_failures,
                                  text_rows=text_rows, text_failures=text_failures)
            if reason is None and token_rows is not None and mid not in token_rows:
                reason = "token states missing"
            if reason is None:
                keep.append(mid)
            else:
                dropped.append({"material_id": mid, "split": name, "reason": reason})
        splits[name] = SplitData(
            ids=keep,
            y=np.array([targets[m] for m in keep], dtype=np.float64),
            graphs=[graph_arrays[m] for m in keep] if graph_arrays is not None else None,
            text=matrix[[text_rows[m] for m in keep]] if text_rows is not None else None,
            tokens=[token_states(token_rows[m]) for m in keep] if token_rows is not None else None,
        )
    if dropped:
        log.warning("dropped %d split members after the split (reasons in the run summary)", len(dropped))
    split_meta = {k: split_rec.get(k) for k in ("target", "unit", "method", "regime", "seed", "hash", "train_domain")}
    return TrainingData(splits, dropped, split_meta, source, graph_meta, embed_attrs, hashes)


class CrystalDataset(Dataset):
    """One split as torch_geometric `Data` items.

    Each item carries `y` [1] float32, `material_id` (str) and, where the variant uses them,
    `z` [N] int64, `edge_index` [2, E] int64, `edge_vec` [E, 3] float32 (graph) and `text_emb` [1, D]
    float32 (text). Items without a graph have zero nodes.
    """

    def __init__(self, data: SplitData) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data.ids)

    def __getitem__(self, index: int):
        from torch_geometric.data import Data

        item: dict[str, Any] = {
            "y": torch.tensor([self.data.y[index]], dtype=torch.float32),
            "material_id": self.data.ids[index],
        }
        if self.data.text is not None:
            item["text_emb"] = torch.from_numpy(self.data.text[index : index + 1])  # [1, D]
        if self.data.tokens is not None:  # ragged: the collation concatenates them, n_tokens says whose they are
            states = np.array(self.data.tokens[index])  # a copy: a view of the read-only memory-mapped file
            item.update(tokens=torch.from_numpy(states), n_tokens=torch.tensor([states.shape[0]]))
        if self.data.graphs is not None:
            z, edge_index, edge_vec = self.data.graphs[index]
            # copies: the arrays are read-only views of the Arrow buffers
            item.update(z=torch.tensor(z), edge_index=torch.tensor(edge_index), edge_vec=torch.tensor(edge_vec),
                        num_nodes=int(z.shape[0]))
        else:
            item["num_nodes"] = 0
        return Data(**item)


def make_loader(
    data: SplitData,
    batch_size: int,
    *,
    shuffle: bool = False,
    drop_last: bool = False,
    num_workers: int = 0,
    pin_memory: bool = False,
    generator: torch.Generator | None = None,
):
    """A torch_geometric DataLoader over one split.

    Args:
        data: the split.
        batch_size: crystals per batch.
        shuffle: reshuffle every epoch (train); the order comes from `generator`, so it can be resumed.
        drop_last: drop the last partial batch (train only; evaluation always sees every crystal).
        num_workers: worker processes (0 = in-process).
        pin_memory: page-locked host batches for asynchronous copies to CUDA.
        generator: RNG of the shuffle order and of the workers' base seed. Workers are not
            persistent: every epoch draws from it the same way, so a resumed run replays it exactly.
    """
    from torch_geometric.loader import DataLoader

    return DataLoader(
        CrystalDataset(data), batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
        num_workers=num_workers, pin_memory=pin_memory, generator=generator,
    )
