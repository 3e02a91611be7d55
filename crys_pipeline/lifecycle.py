"""Stage processes die with the workflow that started them (Linux; a no-op elsewhere).

Snakemake runs a job as `bash -c "set -euo pipefail; crys-pipeline ..."` and does not stop it when
snakemake itself is killed: the shell and the stage would keep running, and the rerun would start a
second copy of the same job beside the orphan. Two guards:

* `watch_workflow` (called by the CLI): when an ancestor process is snakemake, a daemon thread checks
  every few seconds that this very process is still alive and still our ancestor; once it is gone,
  the stage logs why and terminates itself (SIGTERM).
* `die_with_parent` (worker pool initialisers): `prctl(PR_SET_PDEATHSIG, SIGTERM)`, so a worker
  process ends when the process that started it ends, however that one ended.

`snakemake --unlock` during a live run removes the lock the run holds, so a second run can start writing
the same files. `unlock_refusal` (called by the Snakefile, which snakemake parses for `--unlock` too) finds a
live snakemake working in the same folder and refuses; `lock_notice` says, whenever a lock is left, whether a
run holds it (wait) or none on this machine does (`--unlock` is safe).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
from pathlib import Path

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
#: Where snakemake keeps the lock files of a working directory.
LOCK_DIR = Path(".snakemake") / "locks"
#: How far up the process tree `watch_workflow` looks for snakemake (stage <- bash <- snakemake ...).
MAX_DEPTH = 6


def die_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when its parent ends; exit now if it already has."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d)", ctypes.get_errno())
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a process from /proc, or None when it does not exist."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[19]  # ppid, starttime (clock ticks since boot)


def _is_snakemake(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(Path(arg.decode(errors="replace")).name.startswith("snakemake") or arg == b"snakemake"
               for arg in argv[:3])


def snakemake_ancestor() -> tuple[int, str] | None:
    """(pid, start time) of the nearest ancestor process that is snakemake, or None."""
    pid = os.getpid()
    for _ in range(MAX_DEPTH):
        info = _stat(pid)
        if info is None or info[0] <= 1:
            return None
        pid = info[0]
        if _is_snakemake(pid):
            parent = _stat(pid)
            return (pid, parent[1]) if parent else None
    return None


def _alive(pid: int, start: str) -> bool:
    info = _stat(pid)
    return info is not None and info[1] == start


def watch_workflow(poll_s: float = 2.0) -> threading.Thread | None:
    """Terminate this process when the snakemake that (indirectly) started it is gone.

    Returns:
        the watching daemon thread, or None when no ancestor is snakemake (a stage run by hand).
    """
    if not sys.platform.startswith("linux"):
        return None
    ancestor = snakemake_ancestor()
    if ancestor is None:
        return None
    pid, start = ancestor
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(poll_s):
            if not _alive(pid, start):
                log.error("snakemake (pid %d), which started this job, is gone: stopping; after a kill, run "
                          "`snakemake --unlock` (only when no snakemake is running in this folder: it removes a "
                          "live run's lock) and then the same command again", pid)
                os.kill(os.getpid(), signal.SIGTERM)
                return

    thread = threading.Thread(target=watch, name="watch-snakemake", daemon=True)
    thread.start()
    return thread


def _ancestors() -> set[int]:
    """This process and every ancestor's pid."""
    pids, pid = {os.getpid()}, os.getpid()
    while (info := _stat(pid)) is not None and info[0] > 1:
        pid = info[0]
        pids.add(pid)
    return pids


def live_runs(workdir: Path) -> dict[int, str]:
    """{pid: command line} of snakemake processes on this machine working in `workdir` (this one excluded).

    Linux only (reads /proc); empty elsewhere.
    """
    proc, mine, found = Path("/proc"), _ancestors(), {}
    if not proc.is_dir():
        return found
    workdir = workdir.resolve()
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine or not _is_snakemake(int(entry.name)):
            continue
        try:
            if Path(os.readlink(entry / "cwd")) == workdir:
                argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
                found[int(entry.name)] = " ".join(argv[1:] if Path(argv[0]).name.startswith("python") else argv)
        except OSError:  # the process ended, or is not ours to read
            continue
    return found


def _runs_text(runs: dict[int, str]) -> str:
    return ", ".join(f"pid {pid} (`{cmd.strip()[:400]}`)" for pid, cmd in sorted(runs.items()))


def unlock_refusal(argv: list[str], workdir: Path) -> str | None:
    """Why `snakemake --unlock` must not run now (a live run in `workdir`), or None (not an unlock, or safe)."""
    if "--unlock" not in argv:
        return None
    runs = live_runs(workdir)
    if not runs:
        return None
    return (f"not unlocking {workdir}: snakemake is running in it ({_runs_text(runs)}); --unlock would remove "
            "that run's lock and let a second run write the same files. Wait for it to finish, or stop it "
            "(kill PID, then --unlock)")


def lock_notice(argv: list[str], workdir: Path) -> str | None:
    """Who holds the lock left in `workdir`: a live run (wait) or, on this machine, none (unlock is safe)."""
    locks = workdir / LOCK_DIR
    if "--nolock" in argv or "--unlock" in argv or not locks.is_dir() or not any(locks.iterdir()):
        return None
    runs = live_runs(workdir)
    if runs:
        return (f"{workdir} is locked by a live run: {_runs_text(runs)}. Wait for it to finish; do not use "
                "--unlock while it runs")
    return (f"{workdir} holds a lock ({locks}) but no snakemake on this machine is running in it: it was left by "
            "a killed run. If none runs from another machine, `snakemake --unlock` is safe, then rerun")
