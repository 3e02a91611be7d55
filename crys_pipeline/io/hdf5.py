"""HDF5 artifacts: the embeddings file (schemas.EMBEDDINGS), written resumably, verified on read.

A finished embeddings file records the sha256 of every dataset (root attribute `digests`); readers
check the datasets they read against it and turn any unreadable file (truncated, garbage, flipped
bytes) into one ArtifactError naming the path and the fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crys_pipeline.io.core import ArtifactError, DiskFullError, corrupt, naming_a_full_disk, stamp, write_atomic
from crys_pipeline.io.parquet import check_meta
from crys_pipeline.schemas import META_KEY

log = logging.getLogger(__name__)


def h5_summary(path: str | Path, rows: int) -> tuple[dict[str, Any], list[tuple[str, tuple, str, Any]]]:
    """(root attributes, [(dataset, shape, dtype, first rows)]) of an HDF5 file."""
    import h5py

    items: list[tuple[str, tuple, str, Any]] = []
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise corrupt(path, exc) from exc
    with handle:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in handle.attrs.items()}

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                head = obj[: min(rows, obj.shape[0])] if obj.shape else obj[()]
                items.append((name, obj.shape, str(obj.dtype), head))

        handle.visititems(visit)
    return attrs, items



_PROGRESS = "_progress"
#: Root attribute holding {dataset: sha256} of every dataset of a finished file.
DIGESTS = "digests"


def _h5_attr(value: Any) -> Any:
    """An HDF5-storable attribute: dicts/lists/None as JSON text, scalars as they are."""
    if value is None or isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    return value


def _h5_attrs_dict(attrs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        value = value.decode() if isinstance(value, bytes) else value
        if isinstance(value, str) and value[:1] in "{[n":
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        out[key] = value.item() if hasattr(value, "item") else value
    return out


class EmbeddingsPartial:
    """An embeddings file under construction at `<out>.partial`, resumable row by row.

    Every dataset of `schemas.EMBEDDINGS` is allocated up front; `_progress/{view}` marks the rows
    written so far and is flushed with them, so a killed job keeps every finished chunk. `finalize`
    checks that every row is written, drops the bookkeeping and renames the file to its final name.
    """

    def __init__(self, handle: Any, final: Path) -> None:
        self._h5 = handle
        self.final = final

    def done(self, view: str) -> Any:
        """Boolean mask [N]: rows of `view` already written."""
        return self._h5[f"{_PROGRESS}/{view}"][()]

    def write_rows(self, view: str, rows: Any, values: dict[str, Any]) -> None:
        """Write rows `rows` (strictly increasing int indices) of `view` and mark them done.

        Args:
            view: text view name.
            rows: int [k] row indices, strictly increasing.
            values: suffix -> array with k leading rows, for every suffix of the layout
                ("" embedding [k, D], "_token_count", "_truncated", "_empty").
        """
        from crys_pipeline.schemas import EMBEDDINGS

        with naming_a_full_disk(self._h5.filename):
            for suffix in EMBEDDINGS.view_datasets:
                self._h5[f"{view}{suffix}"][rows] = values[suffix]
            self._h5[f"{_PROGRESS}/{view}"][rows] = True
            self._h5.flush()

    def close_if_open(self) -> None:
        """Close the partial file unless `finalize` already did (it stays on disk for a later resume).

        Called on the way out of a failure: an error while closing (a full disk fails the final flush
        too) is logged, so that the first error is the one the job reports.
        """
        if self._h5.id.valid:
            try:
                self._h5.close()
            except Exception as exc:  # the error that brought us here is the one to report
                log.warning("%s: not closed cleanly (%s); a later run resumes or replaces it", self.final, exc)

    def finalize(self, attrs: dict[str, Any]) -> None:
        """Check completeness, seal the file (`attrs`, digests, no bookkeeping) and rename it to the final path."""
        from crys_pipeline.schemas import EMBEDDINGS

        missing = {v: int((~self.done(v)).sum()) for v in EMBEDDINGS.views if not self.done(v).all()}
        if missing:
            raise RuntimeError(f"{self.final}: rows still missing per view {missing}")
        partial = Path(self._h5.filename)
        with naming_a_full_disk(partial):
            write_atomic(self.final, lambda _: self._seal(attrs), staging=partial)

    def _seal(self, attrs: dict[str, Any]) -> None:
        """Add `attrs` and the sha256 of every dataset, drop the bookkeeping and close the file."""
        from crys_pipeline.schemas import EMBEDDINGS

        for key, value in attrs.items():
            self._h5.attrs[key] = _h5_attr(value)
        digests = {name: array_digest(_read_dataset(self._h5[name])) for name in EMBEDDINGS.datasets()}
        self._h5.attrs[DIGESTS] = json.dumps(digests, sort_keys=True)
        del self._h5[_PROGRESS]
        self._h5.close()


def partial_path(path: str | Path) -> Path:
    """Where the resumable partial file of the embeddings artifact `path` lives."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


def _partial_matches(handle: Any, meta: dict[str, Any], ids: list[str], dim: int) -> bool:
    old = json.loads(handle.attrs.get(META_KEY, "{}"))
    return (
        old.get("params") == meta["params"] and old.get("inputs") == meta.get("inputs")
        and _PROGRESS in handle and handle["material_id"].shape == (len(ids),)
        and list(handle["material_id"].asstr()[()]) == ids and handle["full"].shape[1] == dim
    )


def open_embeddings_partial(
    path: str | Path, *, rows: dict[str, list[str]], dim: int, params: dict[str, Any], inputs: dict[str, Any]
) -> EmbeddingsPartial:
    """Open (resume) or create the partial file of embeddings artifact `path`.

    A partial file made with the same params, inputs, ids and width is resumed; any other is replaced.

    Args:
        path: final artifact path (`results/embeddings/{source}.h5`); the partial file sits beside it.
        rows: the per-row string datasets (`material_id`, `status`, `error`), each [N].
        dim: embedding width D.
        params: the parameters that make the embeddings (checked by `read_embeddings(expect=...)`).
        inputs: input identity (e.g. the sections file's sha256); a change restarts from scratch.
    """
    import h5py

    from crys_pipeline.schemas import EMBEDDINGS

    final = Path(path)
    partial = partial_path(final)
    meta = stamp(EMBEDDINGS.kind, params, {"inputs": inputs})
    ids = rows["material_id"]
    if partial.exists():
        try:
            handle = h5py.File(partial, "a")
        except OSError as exc:  # a partial file damaged by the kill that interrupted it: start over
            log.warning("%s is unreadable (%s): starting from scratch", partial, exc)
        else:
            if _partial_matches(handle, meta, ids, dim):
                return EmbeddingsPartial(handle, final)
            handle.close()
        partial.unlink()
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        with naming_a_full_disk(partial):
            handle = _create_partial(partial, rows, dim, meta)
    except DiskFullError:
        partial.unlink(missing_ok=True)  # nothing written yet: nothing to resume
        raise
    return EmbeddingsPartial(handle, final)


def _create_partial(partial: Path, rows: dict[str, list[str]], dim: int, meta: dict[str, Any]) -> Any:
    """A new partial file with every dataset allocated, the row strings written and no row marked done."""
    import h5py
    import numpy as np

    from crys_pipeline.schemas import EMBEDDINGS

    handle = h5py.File(partial, "w")
    try:
        n = len(rows["material_id"])
        for name, values in rows.items():
            handle.create_dataset(name, data=np.array(values, dtype=object), dtype=h5py.string_dtype("utf-8"))
        for view in EMBEDDINGS.views:
            for suffix, (dtype, ndim) in EMBEDDINGS.view_datasets.items():
                handle.create_dataset(f"{view}{suffix}", shape=(n, dim) if ndim == 2 else (n,), dtype=dtype)
            handle.create_dataset(f"{_PROGRESS}/{view}", shape=(n,), dtype=bool)
        handle.attrs[META_KEY] = json.dumps(meta, sort_keys=True)
        handle.flush()
    except BaseException:
        with contextlib.suppress(Exception):  # closing flushes again; the first error is the one to report
            handle.close()
        raise
    return handle


def _check_embeddings_layout(handle: Any, where: str) -> int:
    """Raise ArtifactError unless `handle` holds every dataset and attribute of the layout; returns N."""
    from crys_pipeline.schemas import EMBEDDINGS

    n = handle["material_id"].shape[0] if "material_id" in handle else -1
    dim = int(handle.attrs.get("dim", -1))
    for name, (dtype, ndim) in EMBEDDINGS.datasets().items():
        if name not in handle:
            raise ArtifactError(f"{where}: missing dataset {name!r} required by layout {EMBEDDINGS.kind!r}")
        dset = handle[name]
        want = (n, dim) if ndim == 2 else (n,)
        ok_type = dset.dtype.kind in "OS" if dtype == "str" else dset.dtype == np_dtype(dtype)
        if dset.shape != want or not ok_type:
            raise ArtifactError(f"{where}: dataset {name!r} is {dset.dtype}{dset.shape}, layout needs {dtype}{want}")
    for key in EMBEDDINGS.required_attrs:
        if key not in handle.attrs:
            raise ArtifactError(f"{where}: attribute {key!r} missing for layout {EMBEDDINGS.kind!r}")
    return n


def np_dtype(name: str) -> Any:
    """The numpy dtype of a layout dtype name (`float32`, `int32`, `bool`)."""
    import numpy as np

    return np.dtype(name)


def _open_embeddings(path: str | Path, view: str, expect: dict[str, Any] | None) -> Any:
    """Open an embeddings HDF5 read-only after checking kind, version, params and layout."""
    from crys_pipeline.schemas import EMBEDDINGS

    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: no such artifact")
    if view not in EMBEDDINGS.views:
        raise ValueError(f"unknown text view {view!r}; choose one of {EMBEDDINGS.views}")
    return open_checked(path, EMBEDDINGS.kind, expect, _check_embeddings_layout)


def open_checked(path: Path, kind: str, expect: dict[str, Any] | None,
                 check_layout: Callable[[Any, str], Any]) -> Any:
    """An HDF5 artifact of `kind` open read-only after its kind, version, params (`expect`) and layout are checked.

    A file that h5py cannot read, or whose metadata or layout cannot be read, is `corrupt`; the handle is closed
    on any error.
    """
    import h5py

    if not path.exists():
        raise ArtifactError(f"{path}: no such artifact")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise corrupt(path, exc) from exc
    try:
        try:
            check_meta(json.loads(handle.attrs.get(META_KEY, "{}")), kind=kind, where=str(path), expect=expect)
            check_layout(handle, str(path))
        except ArtifactError:
            raise
        except (OSError, ValueError, KeyError) as exc:
            raise corrupt(path, exc) from exc
    except BaseException:
        handle.close()
        raise
    return handle


def _read_dataset(dset: Any) -> Any:
    """A whole dataset as numpy (strings decoded)."""
    return dset.asstr()[()] if dset.dtype.kind == "O" else dset[()]


def array_digest(values: Any) -> str:
    """sha256 of a dataset's values: the bytes of a numeric array, the NUL-joined UTF-8 of strings."""
    import numpy as np

    values = np.asarray(values)
    if values.dtype.kind in "OUS":
        blob = "\0".join(v.decode() if isinstance(v, bytes) else str(v) for v in values.tolist()).encode()
    else:
        blob = np.ascontiguousarray(values).tobytes()
    return hashlib.sha256(blob).hexdigest()


def _read_verified(handle: Any, names: list[str], path: Path) -> dict[str, Any]:
    """Read datasets `names`, checking each against the sha256 recorded when the file was finished."""
    try:
        digests = json.loads(handle.attrs[DIGESTS])
        out = {name: _read_dataset(handle[name]) for name in names}
    except (OSError, ValueError, KeyError) as exc:
        raise corrupt(path, exc) from exc
    for name, values in out.items():
        if digests.get(name) != array_digest(values):
            raise corrupt(path, f"dataset {name!r} differs from its recorded sha256: the file changed after it "
                          "was written")
    return out


def read_embeddings(
    path: str | Path, view: str, expect: dict[str, Any] | None = None
) -> tuple[list[str], Any, dict[str, Any]]:
    """Read one text view of an embeddings HDF5, checked against `schemas.EMBEDDINGS`.

    Args:
        path: `results/embeddings/{source}.h5`.
        view: `full`, `global` or `local`.
        expect: params the file must have been made with (e.g. {"model": ..., "max_length": 512}).

    Returns:
        (ids [N], float32 matrix [N, D] with row i belonging to ids[i], attrs): attrs holds the file's
        attributes (model, revision, pooling, max_length, normalizer, dtype, dim, versions, per-view
        `stats`), `params`, `inputs` (the sections file's sha256 and params, i.e. the robocrys and section
        settings of the texts), `text_view` and `encoder` (model@revision). Per-row flags: `read_embedding_flags`.
    """
    import numpy as np

    with _open_embeddings(path, view, expect) as handle:
        data = _read_verified(handle, ["material_id", view], Path(path))
        ids = list(data["material_id"])
        matrix = np.asarray(data[view], dtype=np.float32)
        attrs = {k: v for k, v in _h5_attrs_dict(handle.attrs).items() if k not in (META_KEY, DIGESTS)}
        meta = json.loads(handle.attrs[META_KEY])
        attrs["params"], attrs["inputs"] = meta["params"], meta.get("inputs", {})
    attrs["text_view"] = view
    attrs["encoder"] = attrs["model"] + (f"@{attrs['revision']}" if attrs.get("revision") else "")
    return ids, matrix, attrs


def verify_embeddings(path: str | Path) -> int:
    """Check a whole embeddings file: kind, version, layout and every dataset against its recorded sha256.

    Returns:
        the number of datasets verified.

    Raises:
        ArtifactError: damaged, edited, of another kind or layout; the message names the path and the fix.
    """
    from crys_pipeline.schemas import EMBEDDINGS

    names = list(EMBEDDINGS.datasets())
    with _open_embeddings(path, EMBEDDINGS.views[0], None) as handle:
        _read_verified(handle, names, Path(path))
    return len(names)


def read_embedding_flags(path: str | Path, view: str) -> dict[str, Any]:
    """Per-row arrays of one view.

    They are `material_id`, `status`, `error` (str [N]), `token_count` (int32 [N], untruncated, special
    tokens included), `truncated` and `empty` (bool [N]).
    """
    keys = ("token_count", "truncated", "empty")
    with _open_embeddings(path, view, None) as handle:
        data = _read_verified(handle, ["material_id", "status", "error", *(f"{view}_{k}" for k in keys)], Path(path))
    out: dict[str, Any] = {name: list(data[name]) for name in ("material_id", "status", "error")}
    out.update({key: data[f"{view}_{key}"] for key in keys})
    return out
