"""A pool of persistent worker processes with a wall-clock limit per item.

Workers are forked from a forkserver that has preloaded the module of the worker's `setup` function
(so heavy imports are done once), with extra environment variables set while they start. Each
worker runs `setup(config)` once, then handles `(key, payload)` items one at a time. An item gets a
wall-clock limit; a worker past it is killed, the item's result is made by `lost` and a fresh worker
takes its place. A worker that dies mid-item is replaced the same way. Every item comes out exactly
once, in input order. Nothing here knows what the items are.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Self

from tqdm import tqdm

#: Per-item work of a worker: (key, payload) -> result.
Handler = Callable[[str, Any], Any]
#: Result of an item that got none: (key, timed_out, error, elapsed seconds) -> result.
Lost = Callable[[str, bool, str, float], Any]


def _worker_main(conn: Connection, setup: Callable[[Any], Handler], config: Any) -> None:
    """Worker process: `setup(config)` once, then handle (position, key, payload) tasks."""
    from crys_pipeline.lifecycle import die_with_parent

    die_with_parent()  # the forkserver, which ends with the stage process
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        handle = setup(config)
    except Exception as exc:  # reported to the parent
        conn.send(("init_error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        position, key, payload = task
        conn.send((position, handle(key, payload)))


@contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    """Set `env` in os.environ for the duration (previous values restored afterwards).

    The first start launches the forkserver (a fresh interpreter); it and every worker forked from
    it keep the variables.
    """
    previous = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


@dataclass
class _Worker:
    process: Any
    conn: Connection
    task: tuple[int, str] | None = None
    deadline: float = 0.0
    started: float = 0.0


class TimeoutPool:
    """Persistent worker processes with a per-item wall-clock limit.

    A worker that passes the limit (or dies) is killed and replaced; the others keep going.
    Use as a context manager; `run` may be called several times.

    Args:
        setup: module-level function run once in each worker with `config`; returns the handler.
            Its module is preloaded by the forkserver.
        config: picklable argument of `setup`.
        timeout_s: wall-clock limit per item in seconds.
        lost: makes the result of an item that timed out or whose worker died.
        workers: number of worker processes.
        env: environment variables the workers start with.
        name: what the workers do (error messages, progress bar); unit: what an item is.
    """

    def __init__(self, setup: Callable[[Any], Handler], config: Any, timeout_s: float, lost: Lost, *,
                 workers: int = 1, env: dict[str, str] | None = None, name: str = "pool",
                 unit: str = "item") -> None:
        self.setup, self.config, self.timeout_s, self.lost = setup, config, timeout_s, lost
        self.workers, self.env, self.name, self.unit = workers, env or {}, name, unit
        self._pool: list[_Worker] = []
        self._ctx = mp.get_context("forkserver")
        self._ctx.set_forkserver_preload([setup.__module__])

    def __enter__(self) -> Self:
        started = [self._start() for _ in range(max(1, self.workers))]
        self._pool = [self._await_ready(w) for w in started]
        return self

    def __exit__(self, *exc: object) -> None:
        for worker in self._pool:
            self._stop(worker, kill=worker.task is not None)
        self._pool = []

    def _start(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(target=_worker_main, args=(child, self.setup, self.config), daemon=True)
        with _environment(self.env):
            process.start()
        child.close()
        return _Worker(process, parent)

    def _await_ready(self, worker: _Worker) -> _Worker:
        try:
            kind, detail = worker.conn.recv()
        except EOFError:
            worker.process.join(timeout=5)
            kind, detail = "died", f"exit code {worker.process.exitcode}"
        if kind != "ready":
            raise RuntimeError(f"{self.name} worker failed to start: {detail}")
        return worker

    @staticmethod
    def _stop(worker: _Worker, kill: bool) -> None:
        if kill:
            worker.process.kill()
        else:
            with contextlib.suppress(BrokenPipeError, OSError):
                worker.conn.send(None)
        worker.process.join(timeout=5)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.conn.close()

    def _replace(self, worker: _Worker) -> None:
        self._stop(worker, kill=True)
        self._pool[self._pool.index(worker)] = self._await_ready(self._start())

    def _assign(self, worker: _Worker, position: int, key: str, payload: Any) -> None:
        worker.conn.send((position, key, payload))
        worker.started = time.monotonic()
        worker.deadline = worker.started + self.timeout_s
        worker.task = (position, key)

    def _collect(self, worker: _Worker) -> tuple[int, Any]:
        """The finished result of a worker whose pipe is readable (`lost` if it died)."""
        position, key = worker.task  # type: ignore[misc]
        worker.task = None
        try:
            got_position, result = worker.conn.recv()
            return got_position, result
        except (EOFError, OSError):
            elapsed = round(time.monotonic() - worker.started, 3)
            worker.process.join(timeout=5)
            error = f"worker process died (exit code {worker.process.exitcode})"
            self._replace(worker)
            return position, self.lost(key, False, error, elapsed)

    def _expire(self, worker: _Worker) -> tuple[int, Any]:
        position, key = worker.task  # type: ignore[misc]
        elapsed = round(time.monotonic() - worker.started, 3)
        error = f"no result within {self.timeout_s:g} s; worker killed"
        self._replace(worker)
        return position, self.lost(key, True, error, elapsed)

    def run(self, items: Iterable[tuple[str, Any]]) -> list[Any]:
        """Handle `(key, payload)` items; results come back in input order."""
        todo = deque(enumerate(items))
        results: list[Any] = [None] * len(todo)
        with tqdm(total=len(results), desc=self.name, unit=self.unit, disable=None) as bar:
            while todo or any(w.task for w in self._pool):
                for worker in self._pool:
                    if worker.task is None and todo:
                        position, (key, payload) = todo.popleft()
                        self._assign(worker, position, key, payload)
                for position, result in self._step():
                    results[position] = result
                    bar.update(1)
        return results

    def _step(self) -> list[tuple[int, Any]]:
        """Wait for the next result or deadline; the items that finished or timed out."""
        busy = [w for w in self._pool if w.task is not None]
        timeout = max(0.0, min(w.deadline for w in busy) - time.monotonic())
        readable = set(wait([w.conn for w in busy], timeout=timeout))
        done = [self._collect(w) for w in busy if w.conn in readable]
        now = time.monotonic()
        done += [self._expire(w) for w in busy if w.conn not in readable and w.deadline <= now]
        return done
