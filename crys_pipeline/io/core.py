"""Stamps, atomic writes, checksums and the plain-file artifacts (JSON, JSON lines, text, torch state).

Every JSON object artifact carries the sha256 of its own canonical content under `CHECKSUM_KEY`;
`read_json` verifies and strips it, so a changed or damaged file is an error, never a silent value.
Torch files are loaded with `weights_only=True`: tensors and plain values only, never code.
A write that runs out of space raises one `DiskFullError` naming the file, whatever library wrote it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from crys_pipeline import __version__
from crys_pipeline.schemas import RUN_MODEL, SCHEMA_VERSION, JsonLayout

#: Key of the self-checksum in every JSON object artifact.
CHECKSUM_KEY = "_sha256"
#: The fix for an artifact that cannot be used.
REBUILD = "delete it and rerun the stage that makes it (snakemake rebuilds a deleted file)"


#: errno values of a write that ran out of space (a full disk, an exceeded quota).
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class ArtifactError(ValueError):
    """An artifact is missing, corrupt, of the wrong kind or version, or was made with other parameters."""


class DiskFullError(OSError):
    """A write failed because the file system holding the file is full; the message names the file."""

    def __init__(self, path: str | Path) -> None:
        self.message = (f"{path}: could not be written, the disk is full (no space left in {Path(path).parent}); "
                        "free some space, then rerun the same command")
        super().__init__(errno.ENOSPC, self.message, str(path))

    def __str__(self) -> str:
        return self.message


def _out_of_space(exc: BaseException, folder: Path) -> bool:
    """Whether a failed write ran out of space.

    ENOSPC/EDQUOT anywhere in the exception chain (pyarrow, h5py and Python's own files carry it), else no
    block left for the writer in `folder`'s file system (torch's writer raises a RuntimeError without errno:
    `[enforce fail at inline_container.cc:...] . unexpected pos ...`).
    """
    chain: BaseException | None = exc
    while chain is not None:
        if isinstance(chain, OSError) and chain.errno in DISK_FULL:
            return True
        chain = chain.__cause__ or chain.__context__
    try:
        return os.statvfs(folder).f_bavail == 0
    except OSError:
        return False


@contextmanager
def naming_a_full_disk(path: str | Path) -> Iterator[None]:
    """Turn any failure of the writes inside the block that ran out of space into a DiskFullError naming `path`."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as exc:
        if _out_of_space(exc, Path(path).parent):
            raise DiskFullError(path) from exc
        raise


def disk_full_message(exc: OSError) -> str | None:
    """The one-line message of an OSError that is a full disk (naming its file), None for any other OSError."""
    if exc.errno not in DISK_FULL:
        return None
    return str(exc) if isinstance(exc, DiskFullError) else str(DiskFullError(exc.filename or "a file"))


def corrupt(path: str | Path, exc: BaseException | str) -> ArtifactError:
    """The one-line error for an unreadable or damaged artifact: the path, the cause and the fix."""
    text = str(exc).strip()
    cause = exc if isinstance(exc, str) else f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
    return ArtifactError(f"{path}: corrupt or unreadable artifact ({cause}); {REBUILD}")


def stamp(kind: str, params: dict[str, Any], extra: dict[str, Any] | None) -> dict[str, Any]:
    """The metadata every Parquet/HDF5 artifact carries: kind, versions, params, `extra`.

    No build time: the same content gives the same bytes (and sha256) on every rebuild; a stage that
    wants to record when it ran writes the time into a sidecar (the graph folder's manifest.json).
    """
    meta = {"kind": kind, "schema_version": SCHEMA_VERSION, "package_version": __version__, "params": params}
    meta.update(extra or {})
    return meta


def write_atomic(path: str | Path, write: Callable[[Path], Any], staging: Path | None = None) -> None:
    """Write `path` all or nothing: the one way every artifact reaches its final name.

    `write(tmp)` fills a temporary file beside `path` (same folder, so the same file system), which is
    then renamed onto `path` (`os.replace`, atomic): a reader or a killed job never sees a half-written
    file under the final name. When `write` fails, the temporary file is removed and `path` is untouched;
    a failure for lack of space is a `DiskFullError` naming `path`.

    Args:
        path: the artifact's final path (its folder is created).
        write: fills the file at the path it is given.
        staging: a file beside `path` already being built under a name of its own (the resumable
            embeddings `.partial`) to rename instead of a fresh temporary file; it is kept when `write`
            fails, so a later run resumes it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging
    try:
        with naming_a_full_disk(path):  # checked before the temporary file is removed and frees its space
            if tmp is None:
                fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
                os.close(fd)
                tmp = Path(name)
            write(tmp)
            os.replace(tmp, path)
    finally:
        if staging is None and tmp is not None:
            tmp.unlink(missing_ok=True)


def json_digest(obj: Any) -> str:
    """sha256 of the canonical JSON of `obj` (sorted keys, no whitespace)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_json(obj: Any, path: str | Path, checksum: bool = True, layout: JsonLayout | None = None) -> None:
    """Write JSON atomically (sorted keys, indented); a dict gets its own sha256 under `CHECKSUM_KEY`.

    `checksum=False` only for files another program reads (e.g. a leaderboard contribution). With a
    `layout`, the dict is stamped with the layout's kind and SCHEMA_VERSION and must follow it.

    Raises:
        ArtifactError: `obj` breaks `layout`; the message names the path and the key.
    """
    if layout is not None:
        obj = {**obj, "kind": layout.kind, "schema_version": SCHEMA_VERSION}
        problem = layout.problem(obj)
        if problem:
            raise ArtifactError(f"{path}: not written, {problem}")
    if checksum and isinstance(obj, dict):
        obj = {**{k: v for k, v in obj.items() if k != CHECKSUM_KEY}, CHECKSUM_KEY: json_digest(obj)}
    text = json.dumps(obj, indent=1, sort_keys=True) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(text))


def read_json(path: str | Path, checked: bool = True, layout: JsonLayout | None = None) -> Any:
    """Read a JSON artifact; a dict's `CHECKSUM_KEY` is verified (required unless `checked=False`) and dropped.

    With a `layout`, the file must be a dict following it (kind, SCHEMA_VERSION, every key with its type).

    Raises:
        FileNotFoundError: no such file.
        ArtifactError: not JSON, (checked) no or a wrong checksum, or (layout) a missing, unknown or mistyped
            key; the message names the path, the key and the fix.
    """
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise corrupt(path, exc) from exc
    if not isinstance(obj, dict):
        if layout is not None:
            raise corrupt(path, f"a JSON {type(obj).__name__}, the {layout.kind} layout is an object")
        return obj
    digest = obj.pop(CHECKSUM_KEY, None)
    if checked and digest is None:
        raise corrupt(path, f"no {CHECKSUM_KEY} checksum: not written by this version of crys_pipeline")
    if digest is not None and digest != json_digest(obj):
        raise corrupt(path, f"{CHECKSUM_KEY} checksum mismatch: the file changed after it was written")
    problem = layout.problem(obj) if layout is not None else None
    if problem:
        raise ArtifactError(f"{path}: {problem}; {REBUILD}")
    return obj


def write_text(text: str, path: str | Path) -> None:
    """Write a text artifact (CSV, Markdown, JSON lines) atomically."""
    write_atomic(path, lambda tmp: tmp.write_text(text))


def read_jsonl(path: str | Path) -> list[Any]:
    """Read a JSON-lines artifact (one JSON value per non-empty line); a bad line is named by number."""
    path = Path(path)
    out = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError as exc:
                raise corrupt(f"{path}:{number}", exc) from exc
    return out


def write_torch(obj: Any, path: str | Path) -> None:
    """torch.save `obj` (tensors and plain values only, so `read_torch` can load it) atomically."""
    import torch

    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def read_torch(path: str | Path) -> Any:
    """Load a torch file onto the CPU as tensors and plain values only (`weights_only=True`).

    A file holding anything else (a pickle that could run code) is refused without being run.

    Raises:
        FileNotFoundError: no such file.
        ArtifactError: refused (other objects) or corrupt; the message names the path.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ArtifactError(f"{path}: refused, it holds objects other than tensors and plain values, which "
                            f"could run code when loaded ({first}); use a model file written by "
                            "`crys-pipeline train`") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise corrupt(path, exc) from exc


def read_model_json(run_dir: str | Path) -> dict[str, Any]:
    """A run's model.json, checksum and `schemas.RUN_MODEL` layout verified.

    Read after checking that the run's model.pt is the file it names (`model_sha256`).

    Raises:
        ArtifactError: a missing, unknown or mistyped key, or a model.pt that is not the run's own.
    """
    path = Path(run_dir) / "model.json"
    meta = read_json(path, layout=RUN_MODEL)
    weights = path.with_name("model.pt")
    if not weights.is_file() or sha256_file(weights) != meta["model_sha256"]:
        raise corrupt(weights, f"missing or not the file {path.name} was written with (sha256 differs)")
    return meta


def verify_files(folder: str | Path, digests: dict[str, str] | None) -> None:
    """Check that every file named in `digests` under `folder` still has that sha256.

    `digests` is {file name: sha256}, e.g. a run summary's `files`; nothing to check when it is None.

    Raises:
        ArtifactError: a file is missing or changed, naming it and the fix.
    """
    for name, digest in (digests or {}).items():
        path = Path(folder) / name
        if not path.is_file() or sha256_file(path) != digest:
            raise corrupt(path, "missing, or not the file the run recorded (sha256 differs)")


def check_lineage(structures: str | Path, derived: dict[Path, str | None], sha: str | None = None) -> None:
    """Raise ArtifactError when an artifact in `derived` was made from another structures file.

    `derived` is {path: the structures sha256 it records}; an artifact whose sha256 differs from that of
    `structures` (`sha`, computed when None) is stale or swapped. An artifact that records no structures
    sha256 (None) is not checked.
    """
    sha = sha or sha256_file(structures)
    for path, recorded in derived.items():
        if recorded is not None and recorded != sha:
            raise ArtifactError(f"{path}: made from another structures file than {structures} (sha256 "
                                f"{recorded[:12]}... vs {sha[:12]}...): one of the two is stale, swapped or "
                                "damaged; delete it and rerun the stage that makes it")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
