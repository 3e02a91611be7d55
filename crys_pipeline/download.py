"""Stage `download`: locate or fetch a source snapshot and record what was used, with sha256.

Two ways to a snapshot, tried in this order:

1. A configured local snapshot folder that holds the source, in one of the known file layouts:
   the offline JSON-lines files of ../shared/data (`OFFLINE_FILES`) or the jarvis-tools figshare zip
   (`<js_tag>.zip`, e.g. `jdft_3d-8-18-2021.json.zip`, as jarvis-tools caches it).
2. A download of the jarvis-tools figshare zip (URL from `jarvis.db.figshare.get_db_info`) into the
   download folder; for `mp` sources also the elastic moduli through mp-api when `MP_API_KEY` is set.

A `folder` source (provider `folder`: your own structure files and an id_prop table) has its manifest
written by `crys_pipeline.sources.folder.fetch_folder` instead (sha256 of the table and of every listed file).

Snapshots are never edited: the manifest records their path, format and sha256, and `ingest`
refuses a file whose hash changed. Paths are recorded as configured (relative to the working
directory when `snapshot_dir` is), so a moved project folder keeps its manifests valid. A snapshot is
read through once before it is recorded: a truncated or damaged gzip or zip (a copy or download cut
short) stops here, naming the file. `snapshot_digest` is the `download` rule's checksum param, so an
edit that keeps the file's modification time still reruns download. Offline with no local snapshot,
`SnapshotUnavailable` names both ways out.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

from crys_pipeline.io import sha256_file, write_atomic, write_json

log = logging.getLogger(__name__)

#: Offline JSON-lines snapshots (../shared/data/PROVENANCE.md), by provider.
OFFLINE_FILES = {
    "jarvis": "jarvis_dft3d_2021_structures.jsonl.gz",
    "mp": "mp_2018_structures.jsonl.gz",
}
FORMAT_OFFLINE = "offline_jsonl"
FORMAT_FIGSHARE = "jarvis_figshare_zip"
FORMAT_MP_ELASTICITY = "mp_api_elasticity_json"
DOWNLOAD_TIMEOUT_S = 60


class SnapshotUnavailable(RuntimeError):
    """No local snapshot holds the source and it cannot be downloaded."""


def figshare_entry(jarvis_key: str) -> tuple[str, str]:
    """(url, js_tag) of a jarvis-tools figshare dataset key, e.g. dft_3d_2021 -> jdft_3d-8-18-2021.json."""
    from jarvis.db.figshare import get_db_info

    info = get_db_info()
    if jarvis_key not in info:
        raise ValueError(f"unknown jarvis-tools dataset key {jarvis_key!r}")
    return info[jarvis_key][0], info[jarvis_key][1]


def local_snapshot_candidates(snapshot_dir: Path, provider: str) -> list[Path]:
    """The files of `snapshot_dir` that `find_local_snapshot` may pick for `provider`.

    They are the download rule's inputs, so that editing a snapshot reruns download and ingest: the offline
    file when present, else every jarvis-tools figshare zip (``*.json.zip``) in the folder. No jarvis-tools
    import (DAG-time cheap).
    """
    offline = snapshot_dir / OFFLINE_FILES[provider]
    if offline.is_file():
        return [offline]
    return sorted(p for p in snapshot_dir.glob("*.json.zip") if p.is_file())


def find_local_snapshot(snapshot_dir: Path, provider: str, jarvis_key: str) -> tuple[Path, str] | None:
    """The snapshot file in `snapshot_dir` for this source and its format, or None."""
    offline = snapshot_dir / OFFLINE_FILES[provider]
    if offline.is_file():
        return offline, FORMAT_OFFLINE
    _, js_tag = figshare_entry(jarvis_key)
    figshare = snapshot_dir / f"{js_tag}.zip"
    if figshare.is_file():
        return figshare, FORMAT_FIGSHARE
    return None


def _http_download(url: str, dest: Path) -> None:
    """Stream `url` to `dest` (atomically), with a progress bar.

    Raises:
        OSError: the connection failed, or ended before the announced content length.
    """
    import requests
    from tqdm import tqdm

    def stream(tmp: Path) -> None:
        with requests.get(url, stream=True, timeout=DOWNLOAD_TIMEOUT_S) as response:
            response.raise_for_status()
            total = int(response.headers.get("content-length", 0))
            with open(tmp, "wb") as handle, tqdm(total=total, unit="B", unit_scale=True, disable=None) as bar:
                for block in response.iter_content(1 << 20):
                    handle.write(block)
                    bar.update(len(block))
        if total and tmp.stat().st_size != total:
            raise OSError(f"the download of {url} ended after {tmp.stat().st_size} of {total} bytes")

    write_atomic(dest, stream)


def download_figshare(jarvis_key: str, download_dir: Path) -> Path:
    """Download the jarvis-tools figshare zip of `jarvis_key` (kept if already complete)."""
    url, js_tag = figshare_entry(jarvis_key)
    dest = download_dir / f"{js_tag}.zip"
    if not dest.is_file():
        log.info("downloading %s from %s", dest.name, url)
        _http_download(url, dest)
    return dest


def download_mp_elasticity(download_dir: Path) -> Path | None:
    """Fetch MP VRH elastic moduli through mp-api when MP_API_KEY is set; None without a key."""
    key = os.environ.get("MP_API_KEY")
    if not key:
        log.warning("MP_API_KEY is not set: the MP moduli targets (K_VRH, G_VRH) will be empty")
        return None
    from mp_api.client import MPRester

    with MPRester(key) as rester:
        docs = rester.materials.elasticity.search(fields=["material_id", "bulk_modulus", "shear_modulus"])
    rows = [
        {"material_id": str(d.material_id), "K_VRH": (d.bulk_modulus or {}).get("vrh"),
         "G_VRH": (d.shear_modulus or {}).get("vrh")}
        for d in docs
    ]
    dest = download_dir / "mp_elasticity.json"
    write_json(rows, dest)
    return dest


def check_complete(source: str, path: Path) -> None:
    """Read a gzip or zip snapshot through once (checksums included): a truncated or damaged one is an error.

    Raises:
        ValueError: the compressed stream ends early or fails its CRC, naming the file and the fix.
    """
    with open(path, "rb") as probe:
        magic = probe.read(4)
    try:
        if magic[:2] == b"\x1f\x8b":
            with gzip.open(path, "rb") as handle:
                while handle.read(1 << 24):
                    pass
        elif magic == b"PK\x03\x04":
            with zipfile.ZipFile(path) as archive:
                damaged = archive.testzip()
            if damaged:
                raise zipfile.BadZipFile(f"member {damaged} fails its CRC check")
    except (EOFError, gzip.BadGzipFile, zipfile.BadZipFile, zlib.error) as exc:
        raise ValueError(f"source {source!r}: snapshot {path} is truncated or damaged ({type(exc).__name__}: {exc}); "
                         f"replace it with a complete copy (it has {path.stat().st_size} bytes now), then rerun"
                         ) from exc


def snapshot_digest(paths: list[str]) -> str:
    """One sha256 over the names and contents of a source's snapshot files (the `download` rule's rerun key)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{path}\0{sha256_file(path)}\0".encode())
    return digest.hexdigest()


def _file_entry(source: str, path: Path, fmt: str) -> dict[str, Any]:
    """A manifest entry: the path as given (relative to the working directory when it is), format, sha256, size."""
    check_complete(source, path)
    return {"path": str(path), "format": fmt, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def _fetch_online(source: str, provider: str, jarvis_key: str, download_dir: Path, tried: str) -> dict[str, Any]:
    try:
        files = {"structures": _file_entry(source, download_figshare(jarvis_key, download_dir), FORMAT_FIGSHARE)}
        if provider == "mp":
            moduli = download_mp_elasticity(download_dir)
            if moduli is not None:
                files["moduli"] = _file_entry(source, moduli, FORMAT_MP_ELASTICITY)
    except OSError as exc:  # requests' ConnectionError/Timeout are OSErrors
        raise SnapshotUnavailable(
            f"source {source!r}: no local snapshot ({tried}) and the download failed ({type(exc).__name__}: "
            f"{exc}). Either set sources.{source}.snapshot_dir to a folder holding "
            f"{OFFLINE_FILES[provider]} or the jarvis-tools zip {figshare_entry(jarvis_key)[1]}.zip "
            "(e.g. ../shared/data), or run where figshare (and, for MP moduli, the Materials Project API with "
            "MP_API_KEY) can be reached."
        ) from exc
    return {"origin": "download", "files": files}


def fetch(
    source: str, *, provider: str, jarvis_key: str, snapshot_dir: Path | None, download_dir: Path, out: Path
) -> dict[str, Any]:
    """Locate or download the snapshot of one source and write its manifest to `out`.

    Args:
        source: source name (config key), recorded in the manifest.
        provider: `jarvis` or `mp`.
        jarvis_key: jarvis-tools figshare key (`dft_3d_2021`, `megnet`).
        snapshot_dir: local snapshot folder tried first (None: download only); must exist when given.
        download_dir: where downloads are stored.
        out: manifest JSON path.

    Returns:
        The manifest: source, provider, jarvis_key, origin (`local` or `download`) and per-file
        path, format, sha256 and size.

    Raises:
        SnapshotUnavailable: no local snapshot and the download failed.
        ValueError: the snapshot is truncated or damaged.
    """
    if provider not in OFFLINE_FILES:
        raise ValueError(f"unknown provider {provider!r}; expected one of {sorted(OFFLINE_FILES)}")
    if snapshot_dir and not snapshot_dir.is_dir():
        raise FileNotFoundError(f"source {source!r}: snapshot_dir {snapshot_dir} is not a folder; point "
                                f"sources.{source}.snapshot_dir at the folder holding {OFFLINE_FILES[provider]}, "
                                "or set it to null to download")
    found = find_local_snapshot(snapshot_dir, provider, jarvis_key) if snapshot_dir else None
    if found:
        path, fmt = found
        log.info("source %s: local snapshot %s (%s)", source, path, fmt)
        body = {"origin": "local", "files": {"structures": _file_entry(source, path, fmt)}}
    else:
        tried = f"looked in {snapshot_dir}" if snapshot_dir else "no snapshot_dir configured"
        body = _fetch_online(source, provider, jarvis_key, download_dir, tried)
    manifest = {"source": source, "provider": provider, "jarvis_key": jarvis_key, **body}
    write_json(manifest, out)
    return manifest
