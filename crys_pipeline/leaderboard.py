"""`crys-pipeline export-leaderboard`: a training run as a JARVIS-Leaderboard contribution.

The leaderboard (usnistgov/jarvis_leaderboard) scores a contribution folder holding
`AI-SinglePropertyPrediction-<property>-<dataset>-test-mae.csv.zip` (a CSV `id,target,prediction` over
the benchmark's test ids) and a `metadata.json` describing the model. Only targets with an official
benchmark can be exported: the six JARVIS dft_3d properties and MP (megnet) e_form / gap. The export
checks the run's test ids against the benchmark shipped in the installed `jarvis-leaderboard` package
and reports the coverage: a subset run (the offline default) covers only part of the test set, which
the leaderboard would reject, so the export says so rather than pretend otherwise.
"""

from __future__ import annotations

import csv
import io as _stdio
import json
import logging
import platform
import zipfile
from datetime import date
from pathlib import Path
from typing import Any

from crys_pipeline import __version__
from crys_pipeline.io import read_json, read_parquet, write_json
from crys_pipeline.run_id import RunId
from crys_pipeline.schemas import RUN_MODEL, RUN_SUMMARY

log = logging.getLogger(__name__)

#: (source, target) -> (leaderboard dataset, leaderboard property, benchmark file stem)
BENCHMARKS: dict[tuple[str, str], tuple[str, str, str]] = {
    **{("jarvis_dft_3d_2021", t): ("dft_3d", t, f"dft_3d_{t}") for t in (
        "formation_energy_peratom", "optb88vdw_bandgap", "mbj_bandgap", "optb88vdw_total_energy",
        "bulk_modulus_kv", "shear_modulus_gv")},
    ("mp_2018", "e_form"): ("megnet", "e_form", "megnet_e_form"),
    ("mp_2018", "gap_pbe"): ("megnet", "gappbe", "megnet_gappbe"),
}


def benchmark_test_ids(stem: str) -> set[str]:
    """Test ids of a benchmark shipped in the installed jarvis-leaderboard package."""
    from importlib.resources import files

    path = files("jarvis_leaderboard") / "benchmarks" / "AI" / "SinglePropertyPrediction" / f"{stem}.json.zip"
    with zipfile.ZipFile(str(path)) as zf:
        return set(json.loads(zf.read(f"{stem}.json"))["test"])


def _metadata(summary: dict[str, Any], model_json: dict[str, Any], contact: dict[str, str]) -> dict[str, Any]:
    return {
        "model_name": f"CrysMMNet-{RunId.of(summary).variant}",
        "project_url": contact.get("project_url", ""),
        "date_submitted": date.today().strftime("%m-%d-%Y"),
        "author_email": contact.get("author_email", ""),
        "database_version": "8-18-2021" if RunId.of(summary).source.startswith("jarvis") else "6-1-2018",
        "team_name": contact.get("team_name", "crys_pipeline"),
        "time_taken_seconds": summary["wall_seconds"],
        "language": "python",
        "os": platform.system().lower(),
        "software_used": f"crys_pipeline {__version__},torch,torch_geometric,transformers,pymatgen,robocrys",
        "hardware_used": model_json.get("device", ""),
        "git_url": [contact["git_url"]] if contact.get("git_url") else [],
    }


def export_leaderboard(run_dir: Path, *, out_dir: Path, contact: dict[str, str] | None = None) -> Path:
    """Write the contribution csv.zip and metadata.json of one run into `out_dir`; returns the zip path.

    `contact` fills the metadata fields the leaderboard asks of a submitter: project_url,
    author_email, team_name, git_url (empty when not given).

    Raises:
        ValueError: the run's target has no JARVIS-Leaderboard benchmark, or its test ids are not
            benchmark test ids (a different split was used).
    """
    summary = read_json(run_dir / "summary.json", layout=RUN_SUMMARY)
    run = RunId.of(summary)
    key = (run.source, run.target)
    if key not in BENCHMARKS:
        raise ValueError(f"{run_dir}: {key[0]}/{key[1]} has no JARVIS-Leaderboard benchmark, so the leaderboard "
                         "export does not apply (it never does to a folder source of your own structures: the "
                         "leaderboard scores fixed JARVIS/MP test sets); exportable: "
                         + ", ".join(f"{s}/{t}" for s, t in BENCHMARKS))
    dataset, prop, stem = BENCHMARKS[key]
    rows = [r for r in read_parquet(run_dir / "predictions.parquet", "predictions").to_pylist() if r["split"] == "test"]
    reference = benchmark_test_ids(stem)
    foreign = sorted({r["material_id"] for r in rows} - reference)
    if foreign:
        raise ValueError(f"{run_dir}: {len(foreign)} test ids are not in the official {stem} test set "
                         f"(e.g. {foreign[:3]}); export needs the official split")
    coverage = len(rows) / len(reference)
    if coverage < 1:
        log.warning("run covers %d of %d benchmark test ids (%.1f%%): the leaderboard scores complete test sets only",
                    len(rows), len(reference), 100 * coverage)
    text = _stdio.StringIO()
    writer = csv.writer(text)
    writer.writerow(["id", "target", "prediction"])
    writer.writerows([r["material_id"], r["target"], r["prediction"]] for r in rows)
    name = f"AI-SinglePropertyPrediction-{prop}-{dataset}-test-mae.csv"
    out_dir.mkdir(parents=True, exist_ok=True)
    zip_path = out_dir / f"{name}.zip"
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name, text.getvalue())
    model_json = read_json(run_dir / "model.json", layout=RUN_MODEL) if (run_dir / "model.json").exists() else {}
    write_json(_metadata(summary, model_json, contact or {}), out_dir / "metadata.json", checksum=False)
    log.info("wrote %s (%d test predictions, %.1f%% of the benchmark)", zip_path, len(rows), 100 * coverage)
    return zip_path
