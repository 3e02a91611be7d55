"""Every shipped offline config gives every table it declares a usable split: train, val and test members.

The subset of the real snapshots is drawn (download + ingest, no describe) and the splits of every table's
targets are computed exactly as the pipeline's stages do; a table cell whose target has an empty split
would fail its training job, and the table and the report with it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO, SHARED_DATA, default_config

from crys_pipeline import download, ingest, splits
from crys_pipeline.config import validate_config
from crys_pipeline.settings import SplitSettings

SCHEMA = REPO / "workflow/schemas/config.schema.yaml"


def _structures(cfg: dict, source: str, work: Path) -> Path:
    src = cfg["sources"][source]
    manifest = work / f"{source}.json"
    download.fetch(source, provider=src["provider"], jarvis_key=src["jarvis_key"], snapshot_dir=SHARED_DATA,
                   download_dir=work / "dl", out=manifest)
    out = work / f"{source}.parquet"
    ingest.ingest(manifest, targets=src["targets"], subset=src["subset"], stratify_target=src["stratify_target"],
                  out=out, rejected_out=work / f"{source}.rejected.parquet")
    return out


@pytest.mark.parametrize("overlay", [(), ("config/tiny.yaml",)], ids=["config.yaml", "tiny"])
def test_every_declared_table_has_train_val_and_test_materials(overlay: tuple[str, ...], tmp_path: Path) -> None:
    cfg = default_config(*overlay)
    validate_config(cfg, SCHEMA)
    settings = SplitSettings(**cfg["splits"])
    structures: dict[str, Path] = {}
    counts = {}
    for name, block in cfg["tables"].items():
        source = block["source"]
        if source not in structures:
            structures[source] = _structures(cfg, source, tmp_path / source)
        targets = list(cfg["sources"][source]["targets"]) if block["targets"] == "all" else block["targets"]
        for target in targets:
            method = cfg["sources"][source]["targets"][target]["split"]
            folder = tmp_path / source / target
            full, low = splits.make_splits(structures[source], target=target, method=method, settings=settings,
                                           out_full=folder / "full.json", out_low20=folder / "low20.json")
            split = low if block["regime"] == "low20" else full
            counts[(name, target)] = tuple(len(split[f"id_{k}"]) for k in ("train", "val", "test"))
    empty = {cell: n for cell, n in counts.items() if 0 in n}
    assert not empty, f"table cells without train, val or test materials: {empty}"
    if not overlay:  # the offline default: at least 200 val and test materials per JARVIS property
        jarvis = {cell: n for cell, n in counts.items() if cell[0] in ("table1", "table5")}
        assert min(n[1] for n in jarvis.values()) >= 200 and min(n[2] for n in jarvis.values()) >= 200
