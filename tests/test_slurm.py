"""Cluster execution on a real single-node Slurm cluster on loopback (issue 8).

The module fixture starts Slurm with ../shared/tools/slurm/slurm-up.sh (Debian's slurm via apt, one
node bound to 127.0.0.1, one fake `gpu` gres) and always stops it by pid with slurm-down.sh, which
also removes /etc/slurm/slurm.conf (while that file exists without a running slurmctld, every other
`snakemake` call on the machine takes ~10 s longer). Needs root; skipped only where that, or the
scripts, are missing.

Every run goes through `--profile profiles/slurm` unchanged, plus one test-only speed-up: the first
status check 2 s after submission instead of 40 s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import REPO, SHARED_DATA, default_config

from crys_pipeline import io

on_slurm = pytest.mark.slurm

SLURM_TOOLS = Path(os.environ.get("CRYS_SLURM_TOOLS", REPO.parent / "shared" / "tools" / "slurm"))
SOURCE, TARGET, VARIANT = "jarvis_dft_3d_2021", "formation_energy_peratom", "crysmmnet"
RUN_DIR = f"results/train/{SOURCE}/{TARGET}/{VARIANT}/full/seed0"
# The rules one crysmmnet training job depends on, every one of them submitted to Slurm.
TRAIN_RULES = {"download", "ingest", "splits", "describe", "describe_gather", "sections", "embed", "graphs",
               "train"}
GPU_RULES = {"embed", "train"}
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")
LIMIT_S = 1500


@dataclass(frozen=True)
class Run:
    """One snakemake call: its exit status, output and the Slurm jobs it submitted."""

    returncode: int
    output: str
    job_ids: list[str]
    slurm_logs: list[Path]


def _shell(script: Path, base: Path, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script)], check=False, env={**os.environ, "SLURM_CI_DIR": str(base)},
                          capture_output=True, text=True, timeout=timeout)


def _cluster_already_up() -> bool:
    """True when a slurmctld configured by someone else answers here (never touch it)."""
    if not Path("/etc/slurm/slurm.conf").exists() or shutil.which("scontrol") is None:
        return False
    ping = subprocess.run(["scontrol", "ping"], check=False, capture_output=True, text=True, timeout=30)
    return "UP" in ping.stdout


@pytest.fixture(scope="module")
def slurm_cluster() -> Iterator[Path]:
    """A running one-node cluster for this module; stopped by pid afterwards, even after a failed start."""
    up, down = SLURM_TOOLS / "slurm-up.sh", SLURM_TOOLS / "slurm-down.sh"
    if os.geteuid() != 0:
        pytest.skip("starting a Slurm cluster needs root")
    if not (up.is_file() and down.is_file()):
        pytest.skip(f"Slurm helper scripts not found in {SLURM_TOOLS} (set CRYS_SLURM_TOOLS)")
    if shutil.which("sbatch") is None and shutil.which("apt-get") is None:
        pytest.skip("Slurm is not installed and apt-get is not available to install it")
    if _cluster_already_up():
        pytest.skip("another Slurm cluster is running on this machine")
    base = Path(tempfile.mkdtemp(prefix="crys-slurm-", dir="/tmp"))
    base.chmod(0o755)  # the slurm user writes its state below it
    try:
        started = _shell(up, base, timeout=900)
        assert started.returncode == 0, f"slurm-up.sh failed:\n{started.stdout}\n{started.stderr}"
        yield base
    finally:
        stopped = _shell(down, base, timeout=120)
        shutil.rmtree(base, ignore_errors=True)
        assert stopped.returncode == 0, stopped.stderr
        assert not Path("/etc/slurm/slurm.conf").exists()


def tiny_workdir(tmp: Path) -> Path:
    """A working directory holding config.yaml + config/tiny.yaml merged, snapshot folder made absolute."""
    cfg = default_config("config/tiny.yaml")
    for source in cfg["sources"].values():
        source["snapshot_dir"] = str(SHARED_DATA)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return tmp


def run_on_slurm(workdir: Path, *targets: str, snakefile: Path = REPO / "Snakefile") -> Run:
    """`snakemake --profile profiles/slurm` from the repository root (so profiles/default applies too)."""
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    cmd = ["timeout", "-s", "INT", "-k", "30", str(LIMIT_S), str(bindir / "snakemake"),
           "--profile", "profiles/slurm", "--slurm-init-seconds-before-status-checks", "2",
           "-s", str(snakefile), "--directory", str(workdir), *targets]
    done = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=LIMIT_S + 60)
    output = done.stdout + done.stderr
    submitted = SUBMITTED.findall(output)
    return Run(done.returncode, output, [jid for jid, _ in submitted], [Path(log) for _, log in submitted])


def slurm_job(job_id: str) -> dict[str, str]:
    """`scontrol show job` fields of a job (finished jobs stay visible for MinJobAge=600 s)."""
    shown = subprocess.run(["scontrol", "show", "job", "-o", job_id], check=False, capture_output=True, text=True,
                           timeout=30)
    assert shown.returncode == 0, shown.stderr
    return dict(field.split("=", 1) for field in shown.stdout.split() if "=" in field)


def minutes(limit: str) -> int:
    """A Slurm time limit ([D-]HH:MM:SS) in minutes."""
    days, _, clock = limit.rpartition("-")
    hours, mins, _ = (int(part) for part in clock.split(":"))
    return int(days or 0) * 1440 + hours * 60 + mins


def job_rule(job: dict[str, str]) -> str:
    """The rule of a job, from the comment the executor sets (rule_<rule>_wildcards_...)."""
    return re.match(r"rule_(\w+?)(?:_wildcards_.*)?$", job["Comment"]).group(1)


@pytest.fixture(scope="module")
def train_run(slurm_cluster: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Run]:
    """The tiny config through one crysmmnet training job, every job on Slurm."""
    work = tiny_workdir(tmp_path_factory.mktemp("slurm-train"))
    run = run_on_slurm(work, f"{RUN_DIR}/summary.json")
    assert run.returncode == 0, run.output[-12000:]
    return work, run


@on_slurm
@pytest.mark.slow
def test_every_job_ran_as_a_completed_slurm_job(train_run: tuple[Path, Run]) -> None:
    work, run = train_run
    jobs = [slurm_job(jid) for jid in run.job_ids]
    cfg = yaml.safe_load((work / "config.yaml").read_text())
    rules = [job_rule(job) for job in jobs]
    assert sorted(set(rules)) == sorted(TRAIN_RULES)
    assert rules.count("describe") == cfg["describe"]["shards"]
    assert len(rules) == len(TRAIN_RULES) - 1 + cfg["describe"]["shards"]
    for job, rule in zip(jobs, rules, strict=True):
        assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", (rule, job)
        assert job["JobName"].startswith("crys_")  # slurm-jobname-prefix of the profile
        assert ("gres:gpu:1" in job.get("TresPerJob", "")) == (rule in GPU_RULES), (rule, job)
    limits = {rule: minutes(job["TimeLimit"]) for job, rule in zip(jobs, rules, strict=True)}
    assert limits["download"] == 120 and limits["embed"] == 240 and limits["train"] == 2880  # profiles/default


@on_slurm
@pytest.mark.slow
def test_training_outputs_are_complete(train_run: tuple[Path, Run]) -> None:
    work, _ = train_run
    summary = io.read_json(work / RUN_DIR / "summary.json")
    split = io.read_json(work / f"results/splits/{SOURCE}/{TARGET}/full.json")
    assert summary["split_hash"] == split["hash"]
    assert summary["n_train"] + summary["n_val"] + summary["n_test"] + len(summary["dropped"]) == (
        split["n_train"] + split["n_val"] + split["n_test"])
    predictions = io.read_parquet(work / RUN_DIR / "predictions.parquet", "predictions")
    assert predictions.num_rows == summary["n_train"] + summary["n_val"] + summary["n_test"]


@on_slurm
@pytest.mark.slow
def test_second_run_submits_nothing(train_run: tuple[Path, Run]) -> None:
    work, _ = train_run
    again = run_on_slurm(work, f"{RUN_DIR}/summary.json")
    assert again.returncode == 0, again.output[-4000:]
    assert again.job_ids == [] and "Nothing to be done" in again.output


@on_slurm
@pytest.mark.slow
def test_failed_job_reports_its_slurm_log_and_rerun_resumes(slurm_cluster: Path, tmp_path: Path) -> None:
    work = tiny_workdir(tmp_path / "work")
    target = f"results/flaky/{SOURCE}/{TARGET}.json"
    snakefile = REPO / "tests" / "slurm_fixtures" / "Snakefile"
    first = run_on_slurm(work, target, snakefile=snakefile)
    assert first.returncode != 0
    failed = [log for jid, log in zip(first.job_ids, first.slurm_logs, strict=True)
              if slurm_job(jid)["JobState"] == "FAILED"]
    assert len(failed) == 1 and "rule_flaky_count" in str(failed[0])
    report = first.output.split("Error in rule flaky_count:", 1)[1].split("external_jobid", 1)[0]
    assert re.search(rf"^\s+log: .*{re.escape(str(failed[0]))}", report, re.MULTILINE), first.output[-6000:]
    assert "deliberate failure on the first attempt" in failed[0].read_text()
    split = work / f"results/splits/{SOURCE}/{TARGET}/full.json"
    finished_at = split.stat().st_mtime_ns
    second = run_on_slurm(work, target, snakefile=snakefile)
    assert second.returncode == 0, second.output[-8000:]
    assert [job_rule(slurm_job(jid)) for jid in second.job_ids] == ["flaky_count"]
    assert split.stat().st_mtime_ns == finished_at
    counts = json.loads((work / target).read_text())  # the fixture's own plain JSON (no checksum)
    assert counts == {key: io.read_json(split)[key] for key in ("n_train", "n_val", "n_test")}
