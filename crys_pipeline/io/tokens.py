"""The token-states file (schemas.TOKENS): written row by row into a staging file, verified on read.

Like the embeddings file it records the sha256 of every dataset (root attribute `digests`), its parameters
and the sections and structures it was made from; readers check the layout, kind, version, expected
parameters and the digests of the datasets they read. Digests are computed chunk by chunk, so a file larger
than memory (paper scale, docs/method.md §11.1) is sealed and verified without loading it whole; the digest
of a dataset is `hdf5.array_digest` of its values either way.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crys_pipeline.io.core import ArtifactError, corrupt, naming_a_full_disk, stamp, write_atomic
from crys_pipeline.io.hdf5 import DIGESTS, _h5_attr, _h5_attrs_dict, array_digest, np_dtype, open_checked
from crys_pipeline.schemas import META_KEY, TOKENS, WIDTH_DIM

log = logging.getLogger(__name__)

#: Items hashed per step when sealing or verifying a large item dataset.
HASH_CHUNK = 1 << 16


def _item_shape(width: int, m: int, dim: int) -> tuple[int, ...]:
    if width == WIDTH_DIM:
        return (m, dim)
    return (m,) if width == 1 else (m, width)


def _digest(dset: Any) -> str:
    """`array_digest` of a dataset, numeric ones read `HASH_CHUNK` rows at a time."""
    if dset.dtype.kind == "O" or dset.shape[0] <= HASH_CHUNK:
        return array_digest(dset.asstr()[()] if dset.dtype.kind == "O" else dset[()])
    digest = hashlib.sha256()
    for start in range(0, dset.shape[0], HASH_CHUNK):
        digest.update(np.ascontiguousarray(dset[start:start + HASH_CHUNK]).tobytes())
    return digest.hexdigest()


class TokenFileWriter:
    """A token-states file being filled: every dataset allocated, material rows written in any order."""

    def __init__(self, handle: Any, starts: np.ndarray) -> None:
        self._h5 = handle
        self._starts = starts

    def write(self, row: int, items: dict[str, np.ndarray]) -> None:
        """Write the items of material `row` (every item dataset of the layout, `n_tokens[row]` leading rows)."""
        start, end = int(self._starts[row]), int(self._starts[row + 1])
        for name in TOKENS.item_datasets:
            if items[name].shape[0] != end - start:
                raise ValueError(f"row {row}: {items[name].shape[0]} {name} for {end - start} tokens")
            if end > start:
                self._h5[name][start:end] = items[name]

    def seal(self, attrs: dict[str, Any]) -> None:
        """Add `attrs` and the sha256 of every dataset."""
        for key, value in attrs.items():
            self._h5.attrs[key] = _h5_attr(value)
        digests = {name: _digest(self._h5[name]) for name in TOKENS.datasets()}
        self._h5.attrs[DIGESTS] = json.dumps(digests, sort_keys=True)


def write_token_file(path: str | Path, *, rows: dict[str, Any], dim: int, params: dict[str, Any],
                     inputs: dict[str, Any], fill: Callable[[TokenFileWriter], dict[str, Any]]) -> None:
    """Write the token-states file `path` all or nothing (a temporary file beside it, renamed when sealed).

    Args:
        path: `results/tokens/{source}.h5`.
        rows: every row dataset of ``schemas.TOKENS`` ([N] each; `n_tokens` sizes the item datasets).
        dim: width D of the token states.
        params: what made the states (the encoder and `keep`), checked by `read_tokens(expect=...)`.
        inputs: the sections and structures files they were made from (their sha256), for lineage checks.
        fill: writes every material's items through the writer it is given and returns the root attributes
            (encoder, versions, statistics) to seal the file with.
    """
    import h5py

    counts = np.asarray(rows[TOKENS.count], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)])
    meta = stamp(TOKENS.kind, params, {"inputs": inputs})

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as handle:
            for name, dtype in TOKENS.row_datasets.items():
                if dtype == "str":
                    handle.create_dataset(name, data=np.array(rows[name], dtype=object),
                                          dtype=h5py.string_dtype("utf-8"))
                else:
                    handle.create_dataset(name, data=np.asarray(rows[name], dtype=np_dtype(dtype)))
            for name, (dtype, width) in TOKENS.item_datasets.items():
                shape = _item_shape(width, int(starts[-1]), dim)
                handle.create_dataset(name, shape=shape, dtype=np_dtype(dtype))
            handle.attrs[META_KEY] = json.dumps(meta, sort_keys=True)
            writer = TokenFileWriter(handle, starts)
            writer.seal({**fill(writer), "dim": dim})

    with naming_a_full_disk(path):
        write_atomic(path, write)


@dataclass(frozen=True)
class TokenStates:
    """A token-states file read back (the datasets asked for), material by material.

    Attributes:
        rows: every row dataset ([N] each; strings decoded).
        items: the item datasets read ([M] or [M, k]; `states` float16 [M, D]).
        starts: int64 [N + 1]: material i owns items ``starts[i]:starts[i + 1]``.
        attrs: root attributes plus `params` and `inputs` of the stamp.
    """

    rows: dict[str, np.ndarray]
    items: dict[str, np.ndarray]
    starts: np.ndarray
    attrs: dict[str, Any]

    @property
    def ids(self) -> list[str]:
        """Material ids, in file order."""
        return list(self.rows["material_id"])

    def of(self, row: int, name: str) -> np.ndarray:
        """The items `name` of material `row` (a view)."""
        return self.items[name][self.starts[row]:self.starts[row + 1]]


def _check_layout(handle: Any, where: str) -> None:
    """Raise ArtifactError unless `handle` holds every dataset and attribute of ``schemas.TOKENS``."""
    n = handle["material_id"].shape[0] if "material_id" in handle else -1
    m = int(handle[TOKENS.count][()].astype(np.int64).sum()) if TOKENS.count in handle else -1
    dim = int(handle.attrs.get("dim", -1))
    specs = {**{k: (v, 0) for k, v in TOKENS.row_datasets.items()}, **TOKENS.item_datasets}
    for name, (dtype, width) in specs.items():
        if name not in handle:
            raise ArtifactError(f"{where}: missing dataset {name!r} required by layout {TOKENS.kind!r}")
        dset = handle[name]
        want = (n,) if name in TOKENS.row_datasets else _item_shape(width, m, dim)
        ok_type = dset.dtype.kind in "OS" if dtype == "str" else dset.dtype == np_dtype(dtype)
        if dset.shape != want or not ok_type:
            raise ArtifactError(f"{where}: dataset {name!r} is {dset.dtype}{dset.shape}, layout needs {dtype}{want}")
    missing = [key for key in TOKENS.required_attrs if key not in handle.attrs]
    if missing:
        raise ArtifactError(f"{where}: attributes {missing} missing for layout {TOKENS.kind!r}")


def _open(path: Path, expect: dict[str, Any] | None) -> Any:
    """The file open read-only after its kind, version, params and layout are checked."""
    return open_checked(path, TOKENS.kind, expect, _check_layout)


def _verified(handle: Any, name: str, digests: dict[str, str], path: Path) -> np.ndarray:
    """One dataset read whole and checked against the sha256 recorded when the file was sealed."""
    try:
        dset = handle[name]
        values = dset.asstr()[()] if dset.dtype.kind == "O" else dset[()]
    except (OSError, ValueError, KeyError) as exc:
        raise corrupt(path, exc) from exc
    if digests.get(name) != array_digest(values):
        raise corrupt(path, f"dataset {name!r} differs from its recorded sha256: the file changed after it was "
                      "written")
    return values


def _mapped(handle: Any, name: str, digests: dict[str, str], path: Path) -> np.ndarray:
    """A large numeric dataset checked chunk by chunk against its sha256, then memory-mapped read-only.

    The states of a paper-scale file (tens of GB, docs/method.md §11.1) are never loaded whole: a training job
    touches the pages of the materials it batches. A dataset HDF5 did not store contiguously is read instead.
    """
    dset = handle[name]
    try:
        digest, offset = _digest(dset), dset.id.get_offset()
    except (OSError, ValueError) as exc:
        raise corrupt(path, exc) from exc
    if digests.get(name) != digest:
        raise corrupt(path, f"dataset {name!r} differs from its recorded sha256: the file changed after it was "
                      "written")
    if offset is None or dset.size == 0:
        return dset[()]
    return np.memmap(path, dtype=dset.dtype, mode="r", offset=offset, shape=dset.shape)


def read_tokens(path: str | Path, *, items: tuple[str, ...] = ("states",),
                expect: dict[str, Any] | None = None) -> TokenStates:
    """Read a token-states file: every row dataset and the item datasets `items`, each checked against its sha256.

    `states` is memory-mapped (float16, read-only) rather than loaded; the other datasets are read into memory.

    Args:
        path: `results/tokens/{source}.h5`.
        items: item datasets to read (``schemas.TOKENS.item_datasets``); the others stay on disk.
        expect: params the file must have been made with (e.g. {"keep": "all"}).

    Raises:
        ArtifactError: missing, damaged or edited, of another kind, version or layout, or made with other params.
    """
    path = Path(path)
    unknown = [name for name in items if name not in TOKENS.item_datasets]
    if unknown:
        raise ValueError(f"unknown token datasets {unknown}; known: {list(TOKENS.item_datasets)}")
    with _open(path, expect) as handle:
        try:
            digests = json.loads(handle.attrs[DIGESTS])
        except (KeyError, ValueError) as exc:
            raise corrupt(path, exc) from exc
        rows = {name: _verified(handle, name, digests, path) for name in TOKENS.row_datasets}
        data = {name: (_mapped if name == "states" else _verified)(handle, name, digests, path) for name in items}
        attrs = {k: v for k, v in _h5_attrs_dict(handle.attrs).items() if k not in (META_KEY, DIGESTS)}
        meta = json.loads(handle.attrs[META_KEY])
    attrs["params"], attrs["inputs"] = meta["params"], meta.get("inputs", {})
    starts = np.concatenate([[0], np.cumsum(rows[TOKENS.count].astype(np.int64))])
    return TokenStates(rows=rows, items=data, starts=starts, attrs=attrs)


def verify_tokens(path: str | Path) -> int:
    """Check a whole token-states file (layout, stamp and every dataset's sha256, chunk by chunk).

    Returns:
        the number of datasets verified.

    Raises:
        ArtifactError: damaged, edited, of another kind or layout; the message names the path and the fix.
    """
    path = Path(path)
    with _open(path, None) as handle:
        try:
            digests = json.loads(handle.attrs[DIGESTS])
            changed = [name for name in TOKENS.datasets() if digests.get(name) != _digest(handle[name])]
        except (OSError, ValueError, KeyError) as exc:
            raise corrupt(path, exc) from exc
    if changed:
        raise corrupt(path, f"datasets {changed} differ from their recorded sha256: the file changed after it "
                      "was written")
    return len(TOKENS.datasets())
