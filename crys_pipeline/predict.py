"""`crys-pipeline predict`: property predictions for new structure files with trained runs.

Each run directory (``RunId.PATTERN``) holds `model.pt` and `model.json`. The json
records everything needed to featurise a new crystal exactly as in training: the graph parameters,
the robocrys and section settings (carried through the embeddings file) and the text encoder, and the
target's unit and training domain (from the split). Files (CIF, POSCAR/CONTCAR, *.vasp, extended XYZ,
or folders of them) are read as the folder source reads them and named as it names them (the file
name is the id); a file that cannot be read or validated gets a per-file error and does not stop the
others. With several runs (seeds) the table shows every run's prediction and their mean and standard
deviation; a crystal far from the training data or with a non-physical prediction carries a note.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from crys_pipeline.io import ArtifactError, read_model_json, read_torch
from crys_pipeline.run_id import RunId

log = logging.getLogger(__name__)

@dataclass
class Crystal:
    """One input structure and what happened to it.

    Attributes:
        path: the file it came from.
        material_id: its id in the output: the file's path relative to the folder given (its name when given
            directly), as the folder source names a material (so predictions join with an `id_prop.csv` and a
            run's predictions.parquet).
        structure: the pymatgen Structure, or None when the file could not be used.
        error: why the file could not be used ("" when fine).
        flags: notes (description failed or truncated, far from the training data, a non-physical value).
        predictions: run directory name -> prediction (None when the run could not predict it).
    """

    path: Path
    material_id: str
    structure: Any = None
    error: str = ""
    flags: list[str] = field(default_factory=list)
    predictions: dict[str, float | None] = field(default_factory=dict)


@dataclass
class TrainedModel:
    """A trained model loaded for prediction: a run folder's val-selected model and its settings (model.json)."""

    run_dir: Path
    model: Any
    meta: dict[str, Any]

    @property
    def run(self) -> RunId:
        """The run the model was trained in."""
        return RunId.of(self.meta)

    @property
    def name(self) -> str:
        """Label of the run's column (``RunId.label``: unique among the runs of one model)."""
        return self.run.label


def collect_files(paths: list[Path]) -> list[tuple[Path, str]]:
    """(file, material id) of the structure files named by `paths`, folders expanded; unknown paths kept to fail.

    A folder is read as the folder source reads its root: every file below it, subfolders included (not
    following links to other folders, hidden files and folders left out), taken by name (`folder.file_format_of`:
    POSCAR / CONTCAR / *.vasp / *.poscar, *.cif, *.xyz / *.extxyz); the others are named in the log, never
    silently dropped. A file's id is its path relative to the folder (`cif/x.cif`), as an `id_prop.csv` row names
    it; a file named directly has its file name as id.

    Raises:
        ValueError: a folder without any structure file.
    """
    out: list[tuple[Path, str]] = []
    for path in paths:
        if not path.is_dir():
            out.append((path, path.name))
            continue
        found = _structure_files(path)
        if not found:
            raise ValueError(f"{path}: no structure files in the folder or its subfolders (POSCAR*, CONTCAR*, *.vasp, "
                             "*.poscar, *.cif, *.xyz, *.extxyz)")
        out += [(item, item.relative_to(path).as_posix()) for item in found]
    return out


def _structure_files(root: Path) -> list[Path]:
    """The structure files below `root` (sorted by relative path); the other files are named in the log."""
    from crys_pipeline.sources.folder import file_format_of, files_below

    found, other = [], []
    for name in files_below(root):
        try:
            file_format_of(root / name, "auto")
            found.append(root / name)
        except ValueError:
            other.append(name)
    if other:
        log.warning("%s: not read, not structure files by their name: %s", root, ", ".join(other[:10])
                    + (f" and {len(other) - 10} more" if len(other) > 10 else ""))
    return found


def read_crystal(path: Path, material_id: str) -> Crystal:
    """Read and validate one structure file as the folder source does; problems become `Crystal.error`."""
    from crys_pipeline.ingest import validate
    from crys_pipeline.sources.folder import read_structure
    from crys_pipeline.sources.records import RawRecord

    crystal = Crystal(path=path, material_id=material_id)
    if not path.is_file():
        crystal.error = "no such file"
        return crystal
    try:
        structure = read_structure(path, "auto")
    except Exception as exc:  # pymatgen / ase raise many types for malformed files
        crystal.error = f"unreadable structure file: {type(exc).__name__}: {exc}".strip()
        return crystal
    if not structure.is_ordered:
        crystal.error = "disordered structure (partial occupancies) is not supported"
        return crystal
    record = RawRecord(crystal.material_id, structure.lattice.matrix, [s.specie.symbol for s in structure],
                       structure.frac_coords)
    crystal.error = validate(record) or ""
    crystal.structure = None if crystal.error else structure
    return crystal


def load_trained_model(run_dir: Path) -> TrainedModel:
    """Rebuild a run's val-selected model from model.json + model.pt (eval mode, CPU).

    model.json is checked against its layout and model.pt against the sha256 it records; the weights
    load as tensors only (never unpickled code).
    """
    import torch

    from crys_pipeline.atom_features import cgcnn_feature_table
    from crys_pipeline.models import build_from_config

    meta = read_model_json(run_dir)
    model = build_from_config(meta["config"], atom_table=torch.from_numpy(cgcnn_feature_table()))
    state = read_torch(run_dir / "model.pt")
    check_weights_fit(run_dir, meta["config"], model.state_dict(), state)
    model.load_state_dict(state)
    check_target_scale(model, meta["config"], run_dir)
    model.eval()
    return TrainedModel(run_dir=run_dir, model=model, meta=meta)


def check_target_scale(model: Any, config: dict[str, Any], run_dir: Path) -> None:
    """Raise ValueError unless model.pt's target scaling is the one model.json records.

    A model trained with `standardize` predicts (y - mean) / std inside and maps back with the buffers in
    model.pt; a model.json that lost or changed its `target_scaling` would silently predict on another scale.
    """
    recorded = config.get("target_scaling")
    stored = {"shift": float(model.target_scale.shift), "scale": float(model.target_scale.scale)}
    if recorded is None or any(float(recorded.get(k, math.nan)) != v for k, v in stored.items()):
        raise ValueError(f"{run_dir}: model.pt holds the target scaling shift {stored['shift']:.6g}, scale "
                         f"{stored['scale']:.6g}, but model.json records {recorded!r}; the two files do not belong "
                         "together: retrain the run (delete the folder and rerun its training job)")


def _shapes(state: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in state.items()}


def _shapes_of(config: dict[str, Any]) -> dict[str, tuple[int, ...]] | None:
    """Parameter shapes of the model `config` builds (on the meta device: no memory), None when it cannot build."""
    import torch

    from crys_pipeline.models import build_from_config
    from crys_pipeline.models.layers import ATOM_TABLE_SHAPE

    try:
        with torch.device("meta"):
            return _shapes(build_from_config(config, atom_table=torch.zeros(ATOM_TABLE_SHAPE)).state_dict())
    except Exception:  # a candidate setting a model cannot be built with is no candidate
        return None


def _candidates(key: str, value: Any, state: dict[str, tuple[int, ...]]) -> list[Any]:
    """Other values a model setting could have had: ints seen in the weights' shapes, a string setting's choices."""
    from crys_pipeline.settings import ModelSettings
    from crys_pipeline.variants import VARIANTS

    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return sorted(({n for shape in state.values() for n in shape} | set(range(1, 13))) - {value})
    choices = {f.name: f.metadata.get("choices") for f in fields(ModelSettings)}
    choices.update(variant=tuple(VARIANTS))
    return [option for option in choices.get(key) or () if option != value]


def first_mismatching_setting(config: dict[str, Any], state: dict[str, tuple[int, ...]]) -> tuple[str, Any] | None:
    """(setting, trained value) of the first setting of `config` that alone explains the weights `state`.

    Its trained value is the one that gives the model exactly the parameter shapes of `state`; None when no
    change of a single setting does.
    """
    for key, value in config.items():
        for candidate in _candidates(key, value, state):
            if _shapes_of({**config, key: candidate}) == state:
                return key, candidate
    return None


def check_weights_fit(run_dir: Path, config: dict[str, Any], model_state: dict[str, Any],
                      state: dict[str, Any]) -> None:
    """Raise one ArtifactError when model.json's `config` builds a model whose parameters are not model.pt's.

    The error names the run folder and the first setting that differs from the one the weights were
    trained with (or, when no single setting explains it, the first parameter that differs).
    """
    want, got = _shapes(state), _shapes(model_state)
    if want == got:
        return
    found = first_mismatching_setting(config, want)
    if found:
        what = f"model.json says {found[0]}={config[found[0]]!r} but the weights were trained with {found[0]}=" \
               f"{found[1]!r}"
    else:
        name = next(k for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k))
        what = f"parameter {name} is {got.get(name, 'absent')} for model.json's settings, {want.get(name, 'absent')} " \
               "in model.pt"
    raise ArtifactError(f"{run_dir}: model.json does not fit model.pt: {what}; restore the run's model.json, or "
                        "delete the run folder and retrain it")


def _only_fields(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in names}


def graph_arrays(crystal: Crystal, graph_params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(z int64 [N], edge_index int64 [2,E], edge_vec float32 [E,3]) with the run's graph parameters."""
    from crys_pipeline.graphs import knn_graph
    from crys_pipeline.settings import GraphSettings

    structure = crystal.structure
    settings = GraphSettings(**_only_fields(GraphSettings, graph_params))
    graph = knn_graph(structure.lattice.matrix, structure.frac_coords, settings)
    z = np.array([site.specie.Z for site in structure], dtype=np.int64)
    return z, graph.edge_index.astype(np.int64), graph.edge_vec.astype(np.float32)


def text_settings(meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """(encoder settings, describe settings, global_header) the run's text embeddings were made with."""
    attrs = meta["embedding_attrs"]
    sections_params = (attrs.get("inputs") or {}).get("sections_params") or {}
    if not sections_params:
        log.warning("model.json records no section/describe settings: using the defaults")
    encoder = {k: attrs[k] for k in ("model", "revision", "pooling", "max_length", "normalizer") if k in attrs}
    return encoder, sections_params.get("describe", {}), bool(sections_params.get("global_header", False))


def describe_texts(crystals: list[Crystal], describe_params: dict[str, Any], global_header: bool,
                   cache: dict) -> list[tuple[dict[str, str] | None, str]]:
    """(texts {full, global, local} or None, problem) per crystal, with robocrys settings as in training (cached)."""
    from crys_pipeline.describe import describe_structures
    from crys_pipeline.schemas import STATUS_OK
    from crys_pipeline.sections import split_row
    from crys_pipeline.settings import DescribeSettings

    key = repr(("describe", sorted(describe_params.items()), global_header))
    if key not in cache:
        settings = DescribeSettings(**_only_fields(DescribeSettings, describe_params))
        rows = describe_structures([(c.material_id, c.structure) for c in crystals], settings, workers=1)
        cache[key] = [(None, f"description {row['status']}: {row['error']}") if row["status"] != STATUS_OK
                      else (split_row(row, global_header), "") for row in rows]
    return cache[key]


def _encoder(encoder_cfg: dict[str, Any], cache: dict) -> Any:
    """The run's text encoder on the CPU, loaded once per prediction."""
    from crys_pipeline.embed import TextEncoder
    from crys_pipeline.settings import EmbedSettings

    key = repr(("encoder", sorted(encoder_cfg.items())))
    if key not in cache:
        cache[key] = TextEncoder(EmbedSettings(**_only_fields(EmbedSettings, {**encoder_cfg, "device": "cpu"})))
    return cache[key]


def _featurize_text(trained: TrainedModel, crystals: list[Crystal], text_view: str, cache: dict) -> np.ndarray:
    """float32 [n, D] embeddings (rows of crystals whose description failed are NaN)."""
    encoder_cfg, describe_params, header = text_settings(trained.meta)
    key = repr((sorted(encoder_cfg.items()), sorted(describe_params.items()), header, text_view))
    if key not in cache:
        texts = [(t[text_view] if t else None, problem) for t, problem in
                 describe_texts(crystals, describe_params, header, cache)]
        emb, _, truncated = _encoder(encoder_cfg, cache).encode([t or "" for t, _ in texts])
        for i, (text, problem) in enumerate(texts):
            if text is None:
                emb[i] = np.nan
            if problem or truncated[i]:
                crystals[i].flags.append(problem
                                         or f"{text_view} text truncated at {encoder_cfg.get('max_length')} tokens")
        cache[key] = emb
    return cache[key]


def _featurize_tokens(trained: TrainedModel, crystals: list[Crystal], cache: dict) -> list[np.ndarray | None]:
    """Per crystal the float16 [T, D] states of the tokens the model reads (None where the description failed).

    The `tokens` stage's own functions on the full text: the same tokens, categories and token set as in training.
    """
    from crys_pipeline import tokens
    from crys_pipeline.attention.tagging import section_text

    encoder_cfg, describe_params, header = text_settings(trained.meta)
    token_set = trained.meta["embedding_attrs"]["tokens"]["token_set"]
    encoder = _encoder(encoder_cfg, cache)
    texts = describe_texts(crystals, describe_params, header, cache)
    ok = [i for i, (t, _) in enumerate(texts) if t is not None]
    items = [section_text({"material_id": crystals[i].material_id, **texts[i][0]}, "full", encoder.normalize)
             for i in ok]
    out: list[np.ndarray | None] = [None] * len(crystals)
    for j, states in tokens.encode(encoder, tokens.tokenize(encoder, items), token_set):
        out[ok[j]] = states["states"]
    return out


def predict_crystals(trained: TrainedModel, crystals: list[Crystal], cache: dict) -> None:
    """Fill `crystal.predictions[trained.name]` for every usable crystal (`trained`: one run's model)."""
    import torch

    from crys_pipeline.train import predict_loader
    from crys_pipeline.train.data import SplitData, make_loader
    from crys_pipeline.variants import VARIANTS

    spec = VARIANTS[trained.meta["variant"]]
    usable = [c for c in crystals if c.structure is not None]
    text = _featurize_text(trained, usable, spec.text_view, cache) if spec.text_view else None
    states = _featurize_tokens(trained, usable, cache) if spec.tokens else None
    keep = [i for i in range(len(usable)) if (text is None or np.isfinite(text[i]).all())
            and (states is None or states[i] is not None)]
    for i in set(range(len(usable))) - set(keep):
        usable[i].predictions[trained.name] = None
    if not keep:
        return
    graphs = None
    if spec.graph_encoder:
        gkey = repr(sorted(trained.meta["graph_params"].items()))
        graphs = cache.setdefault(gkey, [graph_arrays(c, trained.meta["graph_params"]) for c in usable])
        graphs = [graphs[i] for i in keep]
    data = SplitData(ids=[usable[i].material_id for i in keep], y=np.zeros(len(keep)), graphs=graphs,
                     text=None if text is None else text[keep],
                     tokens=None if states is None else [states[i] for i in keep])
    _ids, _, preds = predict_loader(trained.model, make_loader(data, batch_size=64), torch.device("cpu"))
    for i, value in zip(keep, preds, strict=True):
        usable[i].predictions[trained.name] = float(value)


def format_table(crystals: list[Crystal], models: list[TrainedModel], unit: str) -> str:
    """A plain-text table: id, one column per run, mean (with the target's unit when known), std, notes/errors."""
    names = [m.name for m in models]
    header = ["id", *names, f"mean [{unit}]" if unit else "mean", "std", "notes"]
    lines = [header]
    for c in crystals:
        values = [c.predictions.get(n) for n in names]
        good = [v for v in values if v is not None]
        mean = f"{np.mean(good):.4f}" if good else ""
        std = f"{np.std(good, ddof=1):.4f}" if len(good) > 1 else ""
        notes = c.error or "; ".join(dict.fromkeys(c.flags))
        lines.append([c.material_id, *(f"{v:.4f}" if v is not None else "-" for v in values), mean, std, notes])
    widths = [max(len(row[i]) for row in lines) for i in range(len(header) - 1)]
    # the last column (notes) is not padded: widths covers the others only
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1]
                     for row in lines)


def check_one_model(models: list[TrainedModel]) -> None:
    """Raise ValueError unless `models` are seeds of one model.

    Same source, target, variant and regime, each seed once (a mean and std over them is then a seed
    ensemble).
    """
    targets = {(m.run.source, m.run.target) for m in models}
    if len(targets) != 1:
        raise ValueError(f"runs predict different targets {sorted(targets)}; give runs of one target")
    kinds = sorted({(m.run.variant, m.run.regime) for m in models})
    if len(kinds) != 1:
        raise ValueError(f"runs are different models (variant, regime) {kinds}: their predictions are not one "
                         "mean; run predict once per model")
    seen: dict[str, Path] = {}
    for trained in models:
        if trained.name in seen:
            raise ValueError(f"{trained.run_dir} and {seen[trained.name]} are both {trained.name}; give each seed once")
        seen[trained.name] = trained.run_dir


def predict_files(run_dirs: list[Path], *, paths: list[Path]) -> tuple[list[Crystal], str]:
    """Predict every structure file under `paths` with every run; returns the crystals and the table text.

    Raises:
        ValueError: the runs predict different targets or are different models (variant, regime), or one
            run is given twice: their predictions cannot be averaged into one mean.
    """
    models = [load_trained_model(d) for d in run_dirs]
    check_one_model(models)
    crystals = [read_crystal(p, material_id) for p, material_id in collect_files(paths)]
    for c in crystals:
        if c.error:
            log.error("%s: %s", c.path, c.error)
    cache: dict = {}
    for trained in models:
        predict_crystals(trained, crystals, cache)
    split = models[0].meta.get("split") or {}
    note_domain(crystals, split.get("train_domain") or {}, models[0].meta["target"])
    return crystals, format_table(crystals, models, split.get("unit") or "")


def note_domain(crystals: list[Crystal], domain: dict[str, Any], target: str) -> None:
    """Add `domain.domain_notes` to every predicted crystal (nothing when the runs record no training domain)."""
    from crys_pipeline.domain import domain_notes, volume_per_atom

    if not domain:
        log.info("the runs record no training domain (trained before it was recorded): no far-from-training notes")
        return
    for c in crystals:
        good = [v for v in c.predictions.values() if v is not None]
        if c.structure is None or not good:
            continue
        elements = {site.specie.symbol for site in c.structure}
        c.flags += domain_notes(elements, volume_per_atom(c.structure.lattice.matrix, len(c.structure)),
                                float(np.mean(good)), domain, target)


def has_failures(crystals: list[Crystal]) -> bool:
    """True when a file could not be used or a run could not predict a crystal."""
    return any(c.error or any(v is None or not math.isfinite(v) for v in c.predictions.values()) for c in crystals)


def write_csv(crystals: list[Crystal], path: Path) -> None:
    """The prediction table as CSV (written atomically): id, file, one column per run, mean, std, notes."""
    import csv
    import io as text_io

    from crys_pipeline.io import write_text

    names = sorted({n for c in crystals for n in c.predictions})
    buffer = text_io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "file", *names, "mean", "std", "notes"])
    for c in crystals:
        good = [v for v in (c.predictions.get(n) for n in names) if v is not None]
        writer.writerow([c.material_id, str(c.path), *(c.predictions.get(n, "") for n in names),
                         np.mean(good) if good else "", np.std(good, ddof=1) if len(good) > 1 else "",
                         c.error or "; ".join(dict.fromkeys(c.flags))])
    write_text(buffer.getvalue(), path)
