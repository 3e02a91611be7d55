"""A killed snakemake takes its running stage processes with it (issue 17, case 10)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from conftest import REPO, default_config, tiny_snapshot_dir

SHARD = "results/text/jarvis_dft_3d_2021/describe/1-of-2.parquet"


def processes_in(workdir: Path) -> dict[int, str]:
    """{pid: command line} of every process whose working directory is `workdir`."""
    found = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if Path(os.readlink(proc / "cwd")) == workdir:
                    found[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
    return found


def wait_for(condition, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.5)
    return False


def test_killed_snakemake_leaves_no_describe_job_running(tmp_path: Path) -> None:
    cfg = default_config()
    for source in cfg["sources"].values():
        source.update(snapshot_dir=str(tiny_snapshot_dir(tmp_path / "snapshot")),
                      subset={"train": 16, "val": 4, "test": 4})
    work = (tmp_path / "work").resolve()
    work.mkdir()
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    snakemake = subprocess.Popen([str(bindir / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(work),
                                  "--cores", "2", SHARD], cwd=work, env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert wait_for(lambda: any("describe shard" in c for c in processes_in(work).values()), 180), \
            "the describe job never started"
        time.sleep(3)  # let it start its worker pool
        snakemake.kill()
        snakemake.wait()
        gone = wait_for(lambda: not processes_in(work), 30)
        left = processes_in(work)
        assert gone, f"still running after snakemake was killed: {left}"
    finally:
        snakemake.kill()
        for pid in processes_in(work):
            os.kill(pid, signal.SIGKILL)
    assert not (work / SHARD).exists()


def test_unlock_is_refused_while_a_run_is_live_and_safe_after_it(tmp_path: Path) -> None:
    """Issue 23 case 19: `--unlock` during a live run names the run and keeps its lock; after it, unlock works."""
    from conftest import snakemake_in

    cfg = default_config()
    for source in cfg["sources"].values():
        source.update(snapshot_dir=str(tiny_snapshot_dir(tmp_path / "snapshot")),
                      subset={"train": 16, "val": 4, "test": 4})
    work = (tmp_path / "work").resolve()
    work.mkdir()
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    live = subprocess.Popen([str(bindir / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(work),
                             "--cores", "1", SHARD], cwd=work, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    locks = work / ".snakemake" / "locks"
    try:
        assert wait_for(lambda: locks.is_dir() and any(locks.iterdir()), 180), "the run never locked its folder"
        os.kill(live.pid, signal.SIGSTOP)  # alive and holding its lock for as long as the test needs
        refused = snakemake_in(work, "--unlock")
        assert refused.returncode != 0 and any(locks.iterdir())
        assert (f"not unlocking {work}: snakemake is running in it (pid {live.pid} (`{bindir / 'snakemake'} -s "
                f"{REPO / 'Snakefile'} --directory {work} --cores 1 {SHARD}`))" in refused.stderr), refused.stderr
        assert "Wait for it to finish, or stop it (kill PID, then --unlock)" in refused.stderr
        plan = snakemake_in(work, "-n", SHARD)
        assert f"{work} is locked by a live run: pid {live.pid}" in plan.stdout + plan.stderr, plan
    finally:
        os.killpg(live.pid, signal.SIGKILL)
        live.wait()
    plan = snakemake_in(work, "-n", SHARD)
    notice = plan.stdout + plan.stderr
    assert "but no snakemake on this machine is running in it: it was left by a killed run. If none runs from " \
           "another machine, `snakemake --unlock` is safe, then rerun" in notice, notice[-2000:]
    unlocked = snakemake_in(work, "--unlock")
    assert unlocked.returncode == 0 and not (locks.is_dir() and any(locks.iterdir()))
