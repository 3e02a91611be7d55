"""Workflow-level tests: config validation, the planned DAG and snakemake --lint."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import REPO, default_config, snakemake_in, tiny_snapshot_dir

from crys_pipeline import settings
from crys_pipeline.config import validate_config

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def job_counts(stdout: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}."""
    assert "Job stats:" in stdout, f"no jobs planned:\n{stdout[-2000:]}"
    block = stdout.split("Job stats:")[1].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", block, re.MULTILINE)}


def test_dry_run_plans_whole_pipeline_for_table1(tmp_path: Path) -> None:
    result = snakemake_in(tmp_path, "-n", "results/table1.csv")
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    n_targets = len(cfg["sources"]["jarvis_dft_3d_2021"]["targets"])
    n_variants = len(cfg["tables"]["table1"]["variants"])
    assert counts == {
        "download": 1, "ingest": 1, "splits": n_targets, "describe": cfg["describe"]["shards"],
        "describe_gather": 1, "sections": 1, "embed": 1, "graphs": 1,
        "train": n_targets * n_variants * len(cfg["train"]["seeds"]), "tables": 1,
    }


def test_dry_run_plans_all_six_table5_variants(tmp_path: Path) -> None:
    """Table 5: CGCNN, MEGNet and GATGNN, each alone and with text, on every JARVIS property."""
    result = snakemake_in(tmp_path, "-n", "results/table5.csv")
    assert result.returncode == 0, result.stderr
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    variants = ["cgcnn", "crysmmnet_cgcnn", "megnet", "crysmmnet_megnet", "gatgnn", "crysmmnet_gatgnn"]
    assert cfg["tables"]["table5"]["variants"] == variants
    planned = set(re.findall(r"results/train/jarvis_dft_3d_2021/(\w+)/(\w+)/full/seed0/summary\.json", result.stdout))
    targets = cfg["sources"]["jarvis_dft_3d_2021"]["targets"]
    assert planned == {(t, v) for t in targets for v in variants}
    seeds = cfg["train"]["seeds"]
    assert job_counts(result.stdout)["train"] == len(targets) * len(variants) * len(seeds) and len(targets) == 6


def test_graph_only_table_needs_no_text_stages(tmp_path: Path) -> None:
    result = snakemake_in(tmp_path, "-n", "results/train/jarvis_dft_3d_2021/mbj_bandgap/alignn/full/seed0/summary.json")
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    assert "embed" not in counts and "describe" not in counts and counts["graphs"] == 1


def test_lint_is_clean(tmp_path: Path) -> None:
    result = snakemake_in(tmp_path, "--lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_config_typo_fails_at_parse_time_naming_the_key(tmp_path: Path) -> None:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["train"]["epochs_typo"] = 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    result = snakemake_in(tmp_path / "work", "-n", "--configfile", str(bad))
    assert result.returncode != 0
    assert "epochs_typo" in result.stdout + result.stderr


def test_paper_config_plans_through_snakemake_validation(tmp_path: Path) -> None:
    result = snakemake_in(tmp_path, "-n", "results/table1.csv", "--configfile", str(REPO / "config/paper.yaml"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert job_counts(result.stdout)["describe"] == yaml.safe_load((REPO / "config/paper.yaml").read_text())[
        "describe"]["shards"]


@pytest.mark.parametrize("overlays", [(), ("config/paper.yaml",), ("config/tiny.yaml",),
                                      ("config/example_folder.yaml",), ("config/fusion_gpu.yaml",)])
def test_shipped_configs_validate_merged(overlays: tuple[str, ...], tmp_path: Path) -> None:
    from test_folder import make_example

    cfg = default_config(*overlays)
    if "my_crystals" in cfg["sources"]:  # the example folder, as examples/make_example_folder.py writes it
        make_example(tmp_path / "my_crystals", 6)
        cfg["sources"]["my_crystals"]["root_dir"] = str(tmp_path / "my_crystals")
    validate_config(cfg, SCHEMA)
    for block, cls in settings.STAGES.items():
        settings.make(cls, cfg[block])  # the filled-in blocks are valid settings


def test_overlays_hold_only_what_differs() -> None:
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    for overlay in ("config/paper.yaml", "config/tiny.yaml", "config/example_folder.yaml", "config/fusion_gpu.yaml"):
        same = [path for path, value in leaves(yaml.safe_load((REPO / overlay).read_text())).items()
                if leaves(base).get(path, object()) == value]
        assert not same, f"{overlay} repeats config.yaml's values at {same}"


def leaves(node: object, path: str = "") -> dict[str, object]:
    """Flatten nested mappings to {"a.b.c": value}; lists are leaves."""
    if not isinstance(node, dict) or not node:
        return {path: node}
    return {k: v for key, sub in node.items() for k, v in leaves(sub, f"{path}.{key}" if path else key).items()}


def test_every_schema_key_documents_type_and_default() -> None:
    schema = settings.config_schema(yaml.safe_load(SCHEMA.read_text()))
    missing = []

    def walk(node: dict, path: str) -> None:
        for key, sub in node.get("properties", {}).items():
            if "$ref" not in sub:
                for need in ("description", "default"):
                    if need not in sub:
                        missing.append(f"{path}.{key}: {need}")
                if "type" not in sub and "oneOf" not in sub:
                    missing.append(f"{path}.{key}: type")
            walk(sub, f"{path}.{key}")

    walk(schema, "")
    for name, sub in schema["$defs"].items():
        walk(sub, f"$defs.{name}")
    assert not missing, missing


def test_graph_parameter_change_reruns_graphs_and_nothing_upstream(tmp_path: Path) -> None:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    for source in cfg["sources"].values():
        source.update(snapshot_dir=str(tiny_snapshot_dir(tmp_path / "snapshot")), subset={"train": 6, "val": 2,
                                                                                        "test": 2})
    work = tmp_path / "work"
    graphs = "results/graphs/jarvis_dft_3d_2021"
    first = snakemake_in(work, "--cores", "2", graphs, "results/splits/jarvis_dft_3d_2021/mbj_bandgap/full.json",
                         config=cfg)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Nothing to be done" in snakemake_in(work, "-n", graphs).stdout
    cfg["graphs"]["cutoff"] = 7.0
    cfg["describe"]["timeout_s"] = 30  # a text-stage parameter: must not touch the graph jobs
    plan = snakemake_in(work, "-n", graphs, "results/splits/jarvis_dft_3d_2021/mbj_bandgap/full.json", config=cfg)
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert job_counts(plan.stdout) == {"graphs": 1}
    assert "params" in plan.stdout.lower()


def _tiny_sources(cfg: dict, snapshot: Path, subset: dict | None = None) -> dict:
    for source in cfg["sources"].values():
        source.update(snapshot_dir=str(snapshot), subset=subset or {"train": 4, "val": 1, "test": 1})
    return cfg


def test_edited_snapshot_reruns_download_and_ingest(tmp_path: Path) -> None:
    """Also when the edit keeps the file's modification time (issue 23 case 14): the checksum is a param."""
    import gzip
    import json

    from crys_pipeline.io import read_parquet

    snapshot = tiny_snapshot_dir(tmp_path / "snapshot")
    cfg = _tiny_sources(yaml.safe_load((REPO / "config.yaml").read_text()), snapshot)
    work, out = tmp_path / "work", "results/structures/jarvis_dft_3d_2021.parquet"
    assert snakemake_in(work, "--cores", "1", out, config=cfg).returncode == 0
    first = read_parquet(work / out, "structures").to_pylist()[0]
    path = snapshot / "jarvis_dft3d_2021_structures.jsonl.gz"
    with gzip.open(path, "rt") as fh:
        records = [json.loads(line) for line in fh]
    for rec in records:
        if rec["jid"] == first["material_id"]:
            rec["formation_energy_peratom"] = 123.5
    before = path.stat()
    with gzip.open(path, "wt") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in records))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # as `touch -r` or a restored backup leave it
    plan = snakemake_in(work, "-n", out)
    assert job_counts(plan.stdout) == {"download": 1, "ingest": 1}, plan.stdout[-2000:]
    assert snakemake_in(work, "--cores", "1", out).returncode == 0
    assert read_parquet(work / out, "structures").to_pylist()[0]["formation_energy_peratom"] == 123.5


def test_moving_the_project_folder_keeps_ingest_working(tmp_path: Path) -> None:
    """Issue 23 case 12: manifests name snapshots relative to the working directory, as the config does."""
    from test_folder import make_example

    project = tmp_path / "old"
    tiny_snapshot_dir(project / "shared" / "data")
    work = project / "work"
    make_example(work / "crystals", 4)
    cfg = _tiny_sources(yaml.safe_load((REPO / "config.yaml").read_text()), Path("../shared/data"))
    cfg["sources"]["mine"] = {"provider": "folder", "root_dir": "crystals",
                              "targets": {"e": {"field": "target", "unit": "eV"}}}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))  # relative paths, as a user writes them
    outs = ["results/structures/jarvis_dft_3d_2021.parquet", "results/structures/mine.parquet"]
    first = snakemake_in(work, "--cores", "1", *outs)
    assert first.returncode == 0, first.stderr[-3000:]
    for manifest in ("jarvis_dft_3d_2021", "mine"):
        assert str(project) not in (work / f"resources/snapshots/{manifest}.json").read_text()
    project.rename(tmp_path / "moved")
    work = tmp_path / "moved" / "work"
    for out in outs:
        (work / out).unlink()
    plan = snakemake_in(work, "-n", *outs)
    assert job_counts(plan.stdout) == {"ingest": 2}, plan.stdout[-3000:]
    again = snakemake_in(work, "--cores", "1", *outs)
    assert again.returncode == 0, again.stderr[-3000:]


@pytest.mark.parametrize(("edit", "message"), [
    (lambda c: c["tables"]["table1"].update(source="jarvis_typo"),
     r"tables.table1.source 'jarvis_typo' is not one of \['jarvis_dft_3d_2021', 'mp_2018'\]"),
    (lambda c: c["tables"]["table1"].update(targets=["formation_energy_per_atom"]),
     "tables.table1.targets 'formation_energy_per_atom' .*did you mean 'formation_energy_peratom'"),
    (lambda c: c["sources"]["mp_2018"].update(snapshot_dir="/nonexistent/data"),
     "sources.mp_2018.snapshot_dir '/nonexistent/data' is not a folder.*null to download"),
])
def test_config_cross_checks_name_key_and_choices(tmp_path: Path, edit, message: str) -> None:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    edit(cfg)
    result = snakemake_in(tmp_path, "-n", "results/table1.csv", config=cfg)
    assert result.returncode != 0
    assert re.search(message, result.stdout + result.stderr), result.stderr[-2000:]


def _job_resources(stdout: str, rule: str) -> list[dict[str, str]]:
    """The `resources:` line of every planned job of `rule` in a dry run, as {name: value}."""
    blocks = stdout.split("\nrule ")[1:]
    out = []
    for block in (b for b in blocks if b.startswith(f"{rule}:")):
        line = next(x for x in block.splitlines() if x.strip().startswith("resources:"))
        out.append(dict(item.split("=", 1) for item in line.split("resources:", 1)[1].strip().split(", ")))
    return out


def test_cpu_machine_runs_train_and_embed_as_plain_cpu_jobs(tmp_path: Path) -> None:
    """Without a GPU (device auto here, or cpu anywhere) train/embed ask for no GPU: only --cores limits them."""
    import glob

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    if glob.glob("/dev/nvidia[0-9]*"):
        cfg["train"]["device"] = cfg["embed"]["device"] = "cpu"
    result = snakemake_in(tmp_path, "-n", "--cores", "2", "results/table1.csv", config=cfg)
    assert result.returncode == 0, result.stderr
    train, embed = _job_resources(result.stdout, "train"), _job_resources(result.stdout, "embed")
    assert len(train) == job_counts(result.stdout)["train"] and len(embed) == 1
    for res in train + embed:
        assert (res["gpu"], res["gpu_share"]) == ("0", "0"), res
    profile = yaml.safe_load((REPO / "profiles/default/config.yaml").read_text())
    assert profile["set-threads"]["train"] == 1 and profile["cores"] >= 2  # 2 train jobs at once on 2 cores


@pytest.mark.parametrize(("jobs_per_gpu", "want"), [(1, ("1", "100")), (4, ("0", "25"))])
def test_jobs_per_gpu_lets_training_jobs_share_a_card(tmp_path: Path, jobs_per_gpu: int, want: tuple) -> None:
    """On a GPU (device cuda) a train job asks for one card, or for 1/N of gpu_share (cap 100) when N share."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["train"]["device"] = cfg["embed"]["device"] = "cuda"
    cfg["train"]["jobs_per_gpu"] = jobs_per_gpu
    result = snakemake_in(tmp_path, "-n", "results/table1.csv", config=cfg)
    assert result.returncode == 0, result.stderr
    profile = yaml.safe_load((REPO / "profiles/default/config.yaml").read_text())
    caps = profile["resources"]
    for res in _job_resources(result.stdout, "train"):
        assert (res["gpu"], res["gpu_share"]) == want
        assert caps["gpu_share"] // int(res["gpu_share"]) == jobs_per_gpu  # that many fit under the cap at once
    assert [(r["gpu"], r["gpu_share"]) for r in _job_resources(result.stdout, "embed")] == [("1", "100")]
    assert caps["gpu"] == 1 and profile["set-resource-scopes"] == {"gpu": "local", "gpu_share": "local"}


@pytest.mark.parametrize(("device", "want"), [("cpu", ("0", "0")), ("cuda", ("1", "100"))])
def test_attention_asks_for_a_gpu_as_embed_does(tmp_path: Path, device: str, want: tuple) -> None:
    """The attention rules run the text encoder where embed does: gpu_resources of embed.device."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["embed"]["device"] = device
    targets = ["results/attention/mp_2018/summary.csv", "results/attention/mp_2018/mp-1217910_L5.png"]
    result = snakemake_in(tmp_path, "-n", *targets, config=cfg)
    assert result.returncode == 0, result.stderr
    for rule in ("attention_summary", "attention"):
        assert [(r["gpu"], r["gpu_share"]) for r in _job_resources(result.stdout, rule)] == [want], rule


def test_workflow_included_from_another_snakefile_plans(tmp_path: Path) -> None:
    """The schema is found relative to the project's Snakefile, not the including one (the Slurm fixture)."""
    import subprocess
    import sys

    snakemake_in(tmp_path, "-n")  # writes the work dir's config.yaml
    fixture = REPO / "tests" / "slurm_fixtures" / "Snakefile"
    target = "results/flaky/jarvis_dft_3d_2021/formation_energy_peratom.json"
    result = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-s", str(fixture), "--directory",
                             str(tmp_path), "-n", target], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert job_counts(result.stdout)["flaky_count"] == 1


def test_corrupt_shard_advice_rebuilds_the_graphs_in_one_round(tmp_path: Path) -> None:
    """Issue 23 case 13: the path the message says to delete is one whose deletion makes snakemake rebuild."""
    from crys_pipeline import io

    cfg = _tiny_sources(yaml.safe_load((REPO / "config.yaml").read_text()), tiny_snapshot_dir(tmp_path / "snap"),
                        {"train": 6, "val": 2, "test": 2})
    cfg["graphs"]["shard_size"] = 4
    work, graphs = tmp_path / "work", "results/graphs/jarvis_dft_3d_2021"
    assert snakemake_in(work, "--cores", "2", graphs, config=cfg).returncode == 0
    shard = work / graphs / "shard-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-64] + bytes(64))
    with pytest.raises(io.ArtifactError) as caught:
        io.read_graph_dir(work / graphs)
    message = str(caught.value)
    assert message == (f"{shard}: corrupt or unreadable artifact (sha256 differs from the one recorded in "
                       "manifest.json: the shard changed after it was written); delete the folder "
                       f"{work / graphs} (the graphs stage's output: snakemake rebuilds a deleted folder, not a "
                       "deleted shard) and rerun the same command")
    shard.unlink()  # the old advice: nothing is rebuilt
    assert "Nothing to be done" in snakemake_in(work, "-n", graphs).stdout
    named = Path(re.search(r"delete the folder (\S+) ", message).group(1))
    shutil.rmtree(named)
    assert snakemake_in(work, "--cores", "2", graphs).returncode == 0
    assert io.read_graph_dir(work / graphs).num_rows == 10
