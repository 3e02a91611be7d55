"""The single source of every artifact layout (Parquet and HDF5) and of SCHEMA_VERSION.

Each Parquet artifact kind has a `ParquetLayout`: its required columns with their Arrow types.
Some kinds also carry per-source dynamic columns (one float64 column per target and one string
`split_<target>` column), declared through the file metadata's `targets` list and checked by
`io.read_parquet`. Bump SCHEMA_VERSION whenever a layout changes: readers refuse other versions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

SCHEMA_VERSION = "1"

#: Key under which every artifact stores its JSON metadata (Parquet schema metadata / HDF5 attrs).
META_KEY = "crys_pipeline"

VEC3 = pa.list_(pa.float64(), 3)
MAT33 = pa.list_(VEC3, 3)

#: Status values shared by every per-material stage.
STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_TIMEOUT = "timeout"


@dataclass(frozen=True)
class ParquetLayout:
    """Required columns of one Parquet artifact kind.

    Attributes:
        kind: artifact kind name stamped in the metadata.
        schema: required columns and their Arrow types (extra columns only where `dynamic_targets`).
        description: one line for `crys-pipeline inspect` and the docs.
        dynamic_targets: the file also holds one float64 column per target named in metadata
            `targets`, and one string column `split_<target>`.
    """

    kind: str
    schema: pa.Schema
    description: str
    dynamic_targets: bool = False
    required_meta: tuple[str, ...] = field(default_factory=tuple)


STRUCTURES = ParquetLayout(
    kind="structures",
    description="one row per material: structure, every target (null where missing) and its split label",
    schema=pa.schema(
        [
            pa.field("material_id", pa.string(), nullable=False),
            pa.field("formula", pa.string(), nullable=False),
            pa.field("natoms", pa.int32(), nullable=False),
            pa.field("lattice", MAT33, nullable=False),
            pa.field("species", pa.list_(pa.string()), nullable=False),
            pa.field("frac_coords", pa.list_(VEC3), nullable=False),
        ]
    ),
    dynamic_targets=True,
    required_meta=("source", "targets", "snapshot_sha256"),
)

REJECTED = ParquetLayout(
    kind="rejected",
    description="input records that could not become a valid structure, with the reason",
    schema=pa.schema(
        [
            pa.field("material_id", pa.string(), nullable=False),
            pa.field("reason", pa.string(), nullable=False),
        ]
    ),
    required_meta=("source",),
)

PARQUET: dict[str, ParquetLayout] = {layout.kind: layout for layout in (STRUCTURES, REJECTED)}


def register(layout: ParquetLayout) -> ParquetLayout:
    """Add a layout to the registry (used at import time by this module only)."""
    PARQUET[layout.kind] = layout
    return layout


def split_column(target: str) -> str:
    """Name of the split-label column of `target` in the structures table."""
    return f"split_{target}"


PREDICTIONS = register(ParquetLayout(
    kind="predictions",
    description="one row per material of a training run: split, target and the val-selected model's prediction",
    schema=pa.schema(
        [
            pa.field("material_id", pa.string(), nullable=False),
            pa.field("split", pa.string(), nullable=False),
            pa.field("target", pa.float64(), nullable=False),
            pa.field("prediction", pa.float64(), nullable=False),
        ]
    ),
    required_meta=("source", "target", "variant", "regime", "seed", "split_hash"),
))

ATTENTION = register(ParquetLayout(
    kind="attention",
    description="[CLS] attention of one layer over one description: one row per (head, token), with its word "
    "(word pieces merged) and token category",
    schema=pa.schema(
        [
            pa.field("material_id", pa.string(), nullable=False),
            pa.field("layer", pa.int32(), nullable=False),
            pa.field("head", pa.int32(), nullable=False),
            pa.field("token_index", pa.int32(), nullable=False),
            pa.field("token", pa.string(), nullable=False),
            pa.field("word_index", pa.int32(), nullable=False),
            pa.field("word", pa.string(), nullable=False),
            pa.field("category", pa.string(), nullable=False),
            pa.field("weight", pa.float32(), nullable=False),
        ]
    ),
    required_meta=("text", "truncated", "num_layers", "num_heads"),
))

ATTENTION_SHARES = register(ParquetLayout(
    kind="attention_shares",
    description="per sampled material, layer and token category: share of [CLS] attention (mean over heads) and "
    "token counts; failed rows carry the reason",
    schema=pa.schema(
        [
            pa.field("material_id", pa.string(), nullable=False),
            pa.field("status", pa.string(), nullable=False),
            pa.field("error", pa.string()),
            pa.field("layer", pa.int32()),
            pa.field("category", pa.string()),
            pa.field("share", pa.float64()),
            pa.field("content_share", pa.float64()),
            pa.field("n_tokens", pa.int32()),
            pa.field("content_tokens", pa.int32()),
            pa.field("truncated", pa.bool_()),
        ]
    ),
    required_meta=("counts", "num_layers"),
))
