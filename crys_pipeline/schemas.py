"""The single source of every artifact layout (Parquet, HDF5 and JSON) and of SCHEMA_VERSION.

Each Parquet artifact kind has a `ParquetLayout`: its required columns with their Arrow types.
Some kinds also carry per-source dynamic columns (one float64 column per target and one string
`split_<target>` column), declared through the file metadata's `targets` list and checked by
`io.read_parquet`. The embeddings file has an `H5Layout`; the JSON files of a training run
(summary.json, model.json) have a `JsonLayout`, checked by `io.write_json` / `io.read_json`.
Bump SCHEMA_VERSION whenever a layout changes: readers refuse other versions.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import pyarrow as pa

from crys_pipeline.run_id import RUN_ID_FIELDS, RunId

#: 2: Parquet page checksums, per-dataset sha256 of the embeddings (`digests`), structures lineage.
#: 3: declared summary.json / model.json layouts (stamped with kind and schema_version); model.json holds the
#: graph params once (`graph_params`; `graph_meta` without them).
#: 4: summary.json carries the constant baseline (value, MAEs, `underfit`) and the target scaling; model.json's
#: `config` holds the target scaling (model.pt carries it as buffers).
SCHEMA_VERSION = "4"

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
    required_meta=(*RUN_ID_FIELDS, "split_hash"),
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

GRAPHS = register(ParquetLayout(
    kind="graphs",
    description="one row per crystal: ALIGNN k-nearest graph (z, edge_index 2xE source row first, float32 bond "
    "vectors), or status/error when the neighbour search failed; shards of results/graphs/{source}/",
    schema=pa.schema(
        [
            pa.field("material_id", pa.string(), nullable=False),
            pa.field("status", pa.string(), nullable=False),
            pa.field("error", pa.string()),
            pa.field("natoms", pa.int32(), nullable=False),
            pa.field("nedges", pa.int32(), nullable=False),
            pa.field("cutoff", pa.float64()),
            pa.field("z", pa.list_(pa.int8()), nullable=False),
            pa.field("edge_index", pa.list_(pa.list_(pa.int32()), 2), nullable=False),
            pa.field("edge_vec", pa.list_(pa.list_(pa.float32(), 3)), nullable=False),
        ]
    ),
    required_meta=("source", "structures_sha256", "shard", "n_shards"),
))

DESCRIPTIONS = register(ParquetLayout(
    kind="descriptions",
    description="one row per material: robocrys parts (mineral, component_makeup, components), full text, "
    "condensed-structure symmetry and dimensionality, status/error/elapsed_s/cpu_s (worker CPU, null on timeout); "
    "a describe shard or the merged table",
    schema=pa.schema(
        [
            pa.field("material_id", pa.string(), nullable=False),
            pa.field("status", pa.string(), nullable=False),
            pa.field("error", pa.string(), nullable=False),
            pa.field("elapsed_s", pa.float64(), nullable=False),
            pa.field("cpu_s", pa.float64()),
            pa.field("mineral", pa.string(), nullable=False),
            pa.field("component_makeup", pa.string(), nullable=False),
            pa.field("components", pa.string(), nullable=False),
            pa.field("description", pa.string(), nullable=False),
            pa.field("formula", pa.string(), nullable=False),
            pa.field("spg_symbol", pa.string()),
            pa.field("spg_number", pa.int32()),
            pa.field("crystal_system", pa.string()),
            pa.field("dimensionality", pa.int32()),
            pa.field("symprec", pa.float64()),
            pa.field("oxidation_states", pa.bool_()),
        ]
    ),
    required_meta=("source", "versions", "counts"),
))

SECTIONS = register(ParquetLayout(
    kind="sections",
    description="one row per material: full / global / local texts (docs/method.md §3.2), "
                "empty for failed descriptions",
    schema=pa.schema(
        [
            pa.field("material_id", pa.string(), nullable=False),
            pa.field("status", pa.string(), nullable=False),
            pa.field("error", pa.string(), nullable=False),
            pa.field("full", pa.string(), nullable=False),
            pa.field("global", pa.string(), nullable=False),
            pa.field("local", pa.string(), nullable=False),
        ]
    ),
    required_meta=("source", "versions", "counts"),
))


@dataclass(frozen=True)
class H5Layout:
    """Datasets and attributes of one HDF5 artifact kind with one row per material.

    Attributes:
        kind: artifact kind name stamped in the metadata.
        description: one line for `crys-pipeline inspect` and the docs.
        row_datasets: dataset name -> dtype ("str" = UTF-8 strings) of the [N] per-row datasets.
        views: the text views, one family of datasets each.
        view_datasets: suffix -> (dtype, ndim); dataset `{view}{suffix}` has shape [N] (ndim 1) or
            [N, D] (ndim 2).
        required_attrs: root attributes every file must carry (besides META_KEY).
    """

    kind: str
    description: str
    row_datasets: dict[str, str]
    views: tuple[str, ...]
    view_datasets: dict[str, tuple[str, int]]
    required_attrs: tuple[str, ...] = field(default_factory=tuple)

    def datasets(self) -> dict[str, tuple[str, int]]:
        """Every dataset name -> (dtype, ndim)."""
        out = {name: (dtype, 1) for name, dtype in self.row_datasets.items()}
        for view in self.views:
            out.update({f"{view}{suffix}": spec for suffix, spec in self.view_datasets.items()})
        return out


#: Text views of a description: the sections table's columns and the embeddings file's dataset families
#: (docs/method.md §3.2). A model variant reads one of them (``variants.Variant.text_view``).
TEXT_VIEWS = ("full", "global", "local")

EMBEDDINGS = H5Layout(
    kind="embeddings",
    description="one row per material of the sections table: frozen-encoder text embedding [N, D] per text "
    "view, with untruncated token count, truncated flag and empty-text flag per view",
    row_datasets={"material_id": "str", "status": "str", "error": "str"},
    views=TEXT_VIEWS,
    view_datasets={
        "": ("float32", 2),
        "_token_count": ("int32", 1),
        "_truncated": ("bool", 1),
        "_empty": ("bool", 1),
    },
    required_attrs=("model", "revision", "pooling", "max_length", "normalizer", "dtype", "dim", "versions", "digests"),
)


@dataclass(frozen=True)
class RaggedH5Layout:
    """Datasets of an HDF5 artifact holding a variable number of items per material (the token states).

    Material i owns items ``start[i] : start[i] + count[i]`` of every item dataset, ``start`` being the running
    sum of the row dataset named by `count`: only real items are stored, never padding.

    Attributes:
        kind: artifact kind name stamped in the metadata.
        description: one line for `crys-pipeline inspect` and the docs.
        row_datasets: dataset name -> dtype ("str" = UTF-8 strings) of the [N] per-material datasets.
        item_datasets: dataset name -> (dtype, width): [M] for width 1, [M, width] otherwise, [M, D] for width
            ``WIDTH_DIM`` (D the file's `dim` attribute); M = the sum of `count`.
        count: the row dataset holding each material's number of items.
        required_attrs: root attributes every file must carry (besides META_KEY).
    """

    kind: str
    description: str
    row_datasets: dict[str, str]
    item_datasets: dict[str, tuple[str, int]]
    count: str
    required_attrs: tuple[str, ...] = field(default_factory=tuple)

    def datasets(self) -> list[str]:
        """Every dataset name, rows first."""
        return [*self.row_datasets, *self.item_datasets]


#: `RaggedH5Layout.item_datasets` width meaning "the file's `dim` attribute".
WIDTH_DIM = -1

TOKENS = RaggedH5Layout(
    kind="tokens",
    description="one row per material of the sections table: the frozen encoder's last-layer state of every real "
    "token of the full text (float16, no padding; the attention mask of a padded batch is t < n_tokens), with its "
    "id, character span and word in the normalised text and its attention-stage category (docs/method.md §11.1)",
    row_datasets={"material_id": "str", "status": "str", "error": "str", "text": "str", "global_len": "int32",
                  "n_tokens": "int32", "token_count": "int32", "truncated": "bool"},
    item_datasets={"states": ("float16", WIDTH_DIM), "input_ids": ("int32", 1), "offsets": ("int32", 2),
                   "word_ids": ("int32", 1), "category": ("int8", 1)},
    count="n_tokens",
    required_attrs=("model", "revision", "max_length", "normalizer", "dim", "keep", "categories", "versions",
                    "digests"),
)

H5: dict[str, H5Layout | RaggedH5Layout] = {EMBEDDINGS.kind: EMBEDDINGS, TOKENS.kind: TOKENS}

#: JSON value types of a `JsonLayout` key: type name -> accepted Python types (bool is never an int or number).
JSON_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,), "int": (int,), "number": (int, float), "bool": (bool,), "list": (list,), "dict": (dict,),
}


@dataclass(frozen=True)
class JsonLayout:
    """The keys of one JSON object artifact with their JSON types; nothing more, nothing less.

    Every file also carries `kind` and `schema_version` (added by `io.write_json`), like the
    Parquet and HDF5 stamps.

    Attributes:
        kind: artifact kind name stored under `kind`.
        description: one line for the docs.
        keys: key -> a `JSON_TYPES` name, with a trailing "?" when the value may be null.
    """

    kind: str
    description: str
    keys: dict[str, str]

    def problem(self, obj: dict) -> str | None:
        """What makes `obj` break this layout (naming the key), or None when it follows it."""
        if obj.get("schema_version") != SCHEMA_VERSION:
            return (f"key 'schema_version' is {obj.get('schema_version')!r}, this crys_pipeline reads {self.kind} "
                    f"files of schema version {SCHEMA_VERSION!r} only (written by another version)")
        if obj.get("kind") != self.kind:
            return f"key 'kind' is {obj.get('kind')!r}, expected a {self.kind!r} file"
        for key, spec in self.keys.items():
            name, nullable = spec.rstrip("?"), spec.endswith("?")
            value = obj.get(key)
            if key not in obj:
                return f"key {key!r} is missing (the {self.kind} layout needs {spec})"
            ok = isinstance(value, JSON_TYPES[name]) and (name == "bool" or not isinstance(value, bool))
            if not (ok or (nullable and value is None)):
                return f"key {key!r} is {type(value).__name__}, the {self.kind} layout needs {spec}"
        extra = sorted(set(obj) - set(self.keys) - {"kind", "schema_version"})
        return f"key {extra[0]!r} is not in the {self.kind} layout" if extra else None


#: The run's identity (``run_id.RunId``) as every run file records it: its five fields and their JSON types.
RUN_ID_KEYS = {f.name: "int" if f.type == "int" else "str" for f in fields(RunId)}

RUN_SUMMARY = JsonLayout(
    kind="run_summary",
    description="summary.json of a training run: the val-selected model's MAEs (null for an empty set or a "
    "non-finite value) beside the constant baseline's (the training median) and whether the model underfits, "
    "the target scaling, split sizes and drops, encoder and the text view it read (`text_variant`), stop reason and "
    "the sha256 of the run's other files",
    keys={
        **RUN_ID_KEYS, "test_mae": "number?", "val_mae": "number?", "train_mae": "number?",
        "baseline": "str", "baseline_value": "number?", "baseline_train_mae": "number?",
        "baseline_val_mae": "number?", "baseline_test_mae": "number?", "underfit": "bool", "target_scaling": "str",
        "last_test_mae": "number?", "min_test_mae": "number?",
        "best_epoch": "int", "epochs_run": "int", "epochs": "int", "stop_reason": "str",
        "n_train": "int", "n_val": "int", "n_test": "int", "dropped": "list",
        "encoder": "str?", "text_variant": "str?", "split_hash": "str", "split_method": "str",
        "wall_seconds": "number", "files": "dict",
    },
)

RUN_MODEL = JsonLayout(
    kind="run_model",
    description="model.json of a training run: what rebuilds and featurises for its model.pt (`config`: the "
    "model's settings whole, its variant, text width and fitted target scaling; graph params, embeddings "
    "attributes), the settings, versions and inputs, and model.pt's sha256",
    keys={
        **RUN_ID_KEYS, "config": "dict", "graph_encoder": "dict?", "best_epoch": "int", "train_config": "dict",
        "versions": "dict", "device": "str", "graph_params": "dict", "graph_meta": "dict", "embedding_attrs": "dict",
        "split": "dict", "split_hash": "str", "data_hashes": "dict", "model_sha256": "str",
    },
)
