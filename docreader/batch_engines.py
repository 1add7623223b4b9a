"""Where a batch's jobs run: this process, N local worker processes, or Ray actors on a Ray cluster.

Every engine takes a list of `batch.Job` and yields a `batch.Result` per job as each finishes (any order).
Each worker loads the model once and answers job after job; a worker that dies costs its current document (one
error result), not the run: local processes are replaced, Ray actors too.
"""

from __future__ import annotations

import os
import queue
import signal
import time
from pathlib import Path
from typing import Iterator

from .batch import Job, Result, Settings, answer_job, make_reader
from .errors import DocreaderError

POLL_S = 1.0  # how often the driver checks that its worker processes are alive


def cores() -> int:
    """The CPUs this process may use (the budget local workers share)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover
        return os.cpu_count() or 1


def thread_budget(workers: int, threads: int | None) -> int:
    """Torch threads per worker: --threads when given, else the cores shared out (at least 1 each), so N
    workers never run more threads than there are cores."""
    return threads if threads is not None else max(1, cores() // max(1, workers))


class InProcess:
    """One worker: this process (the model loads here; Ctrl-C stops it between two tokens)."""

    name = "local"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.reader = None

    def run(self, jobs: list[Job]) -> Iterator[Result]:
        from .engine import Reader
        self.reader = self.reader or Reader(self.settings.model, self.settings.overrides,
                                            disk_cache=self.settings.disk_cache)
        for job in jobs:
            yield answer_job(self.reader, job, self.settings, worker="local")

    def close(self) -> None:
        pass


def _process_main(index: int, settings: Settings, jobs, results) -> None:  # pragma: no cover - in a child
    """A local worker: its thread budget set before torch starts, Ctrl-C left to the driver (which stops it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()
    os.environ["OMP_NUM_THREADS"] = str(settings.threads)
    reader = make_reader(settings)
    name = f"process-{index}"
    while (job := jobs.get()) is not None:
        results.put(("start", index, job.path))
        results.put(("done", index, answer_job(reader, job, settings, worker=name)))


def _exit_with_parent(poll_s: float = 2.0) -> None:  # pragma: no cover - in a child
    """A worker whose driver was killed (SIGKILL gives it no time to stop its workers) exits instead of
    answering on for nobody."""
    import threading
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


class Processes:
    """N local worker processes (spawned: each its own model and torch threads), fed from one queue."""

    name = "processes"

    def __init__(self, settings: Settings, workers: int) -> None:
        import multiprocessing
        self.settings, self.workers = settings, workers
        self.ctx = multiprocessing.get_context("spawn")
        self.procs: dict[int, object] = {}

    def _start(self, index: int, jobs, results) -> None:
        p = self.ctx.Process(target=_process_main, args=(index, self.settings, jobs, results), daemon=True,
                             name=f"docreader-batch-{index}")
        p.start()
        self.procs[index] = p

    def run(self, jobs: list[Job]) -> Iterator[Result]:
        from . import engine  # noqa: F401 - torch imported now, not while a result is unpickled (a Ctrl-C there aborts)
        jobs_q, results = self.ctx.Queue(), self.ctx.Queue()
        for job in jobs:
            jobs_q.put(job)
        n = min(self.workers, len(jobs))
        for _ in range(n):
            jobs_q.put(None)  # one stop sign per worker (a replacement takes its dead one's)
        for i in range(n):
            self._start(i, jobs_q, results)
        busy: dict[int, str] = {}  # worker -> the document it is on
        left = len(jobs)
        while left:
            try:
                kind, index, payload = results.get(timeout=POLL_S)
            except queue.Empty:
                for i, p in list(self.procs.items()):
                    if not p.is_alive() and i in busy:  # died on a document: that document fails, a new worker goes on
                        path = busy.pop(i)
                        left -= 1
                        yield Result(path, error=f"the worker process died (exit code {p.exitcode})",
                                     worker=f"process-{i}")
                        self._start(i, jobs_q, results)
                if not any(p.is_alive() for p in self.procs.values()):
                    raise DocreaderError("every batch worker process exited before the jobs were done")
                continue
            if kind == "start":
                busy[index] = payload
            else:
                busy.pop(index, None)
                left -= 1
                yield payload

    def close(self) -> None:
        for p in self.procs.values():
            if p.is_alive():
                p.terminate()
        for p in self.procs.values():
            p.join(timeout=10)
        self.procs.clear()


# -- Ray --------------------------------------------------------------------------------------------------------

RAY_MISSING = "the Ray engine needs Ray: pip install 'docreader[ray]'"


def _local_address(address: str | None) -> bool:
    host = (address or "").replace("ray://", "").rsplit(":", 1)[0]
    return address is None or address == "auto" or host in ("", "127.0.0.1", "localhost", "local")


class RayEngine:
    """Ray actors, each loading the model once, on an existing cluster (`address`) or a Ray instance started
    here for the run. Documents travel to them as bytes (`ship="bytes"`, for machines that do not share this
    file system) or as paths (`ship="paths"`, a shared file system). On a cluster on this machine the workers
    get this process's DOCREADER_* environment (its home, model and log settings); elsewhere their own."""

    name = "ray"

    def __init__(self, settings: Settings, workers: int, address: str | None = None, ship: str = "bytes") -> None:
        try:
            import ray
        except ImportError:
            raise DocreaderError(RAY_MISSING) from None
        self.ray, self.settings, self.workers, self.ship = ray, settings, workers, ship
        self.started_here = not ray.is_initialized()
        if self.started_here:
            env = {k: v for k, v in os.environ.items() if k.startswith(("DOCREADER_", "DSA_"))}
            # "local": a new instance, never a cluster named by a stale /tmp/ray/ray_current_cluster
            kw = {"address": address} if address else {"address": "local", "num_cpus": workers * settings.threads,
                                                        "include_dashboard": False}
            if address:
                _token_auth_like_ray_start()
            try:
                ray.init(**kw, logging_level="ERROR", log_to_driver=False,
                         runtime_env={"env_vars": env} if _local_address(address) and env else None)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise DocreaderError(f"cannot reach the Ray cluster at {address}: {e}") from None
        self.actor_cls = ray.remote(num_cpus=settings.threads)(RayWorker)
        self.actors: list = []

    def _payload(self, job: Job) -> Job:
        """The job as it travels: with the file's bytes (an OSError when the driver cannot read them)."""
        return Job(job.path, job.questions, data=Path(job.path).read_bytes()) if self.ship == "bytes" else job

    def run(self, jobs: list[Job]) -> Iterator[Result]:
        ray = self.ray
        todo = list(reversed(jobs))
        self.actors = [self.actor_cls.remote(self.settings, f"ray-{i}") for i in range(min(self.workers, len(jobs)))]
        flying: dict = {}  # object ref -> (actor index, job)
        unread: list[Result] = []  # documents the driver could not read to ship

        def feed(i: int) -> None:
            while todo:
                job = todo.pop()
                try:
                    flying[self.actors[i].answer.remote(self._payload(job))] = (i, job)
                    return
                except OSError as e:
                    unread.append(Result(job.path, error=f"cannot read it: {e.strerror or e}", worker="driver"))

        for i in range(len(self.actors)):
            feed(i)
        while flying or unread:
            while unread:
                yield unread.pop()
            if not flying:
                break
            done, _ = ray.wait(list(flying), num_returns=1)
            i, job = flying.pop(done[0])
            try:
                yield ray.get(done[0])
            except ray.exceptions.RayActorError as e:  # the actor died with this document: replace it
                yield Result(job.path, error=f"the Ray worker died: {str(e).splitlines()[0]}", worker=f"ray-{i}")
                self.actors[i] = self.actor_cls.remote(self.settings, f"ray-{i}")
            except ray.exceptions.RayError as e:
                yield Result(job.path, error=f"Ray: {str(e).splitlines()[0]}", worker=f"ray-{i}")
            feed(i)

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []
        if self.started_here:
            self.ray.shutdown()


def _token_auth_like_ray_start() -> None:
    """`ray start` turns token authentication on when a token exists (~/.ray/auth_token, $RAY_AUTH_TOKEN) and
    RAY_AUTH_MODE is unset; a driver connecting with an address does not, and is refused. Do as `ray start` does
    (an explicit RAY_AUTH_MODE wins)."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available)
    except ImportError:  # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


class RayWorker:
    """A Ray actor: one model, many documents (made a Ray class by RayEngine, so Ray stays optional)."""

    def __init__(self, settings: Settings, name: str) -> None:
        os.environ["OMP_NUM_THREADS"] = str(settings.threads)
        self.settings, self.reader = settings, make_reader(settings)
        import socket
        self.name = f"{name}@{socket.gethostname()}"

    def answer(self, job: Job) -> Result:
        return answer_job(self.reader, job, self.settings, worker=self.name)


def make_engine(engine: str, settings: Settings, workers: int, address: str | None = None, ship: str = "bytes"):
    """--engine local (one worker: this process; more: worker processes) or ray."""
    if engine == "ray":
        return RayEngine(settings, workers, address, ship)
    if address is not None:
        raise DocreaderError("--address needs --engine ray")
    if engine != "local":
        raise DocreaderError(f"unknown engine {engine!r} (local or ray)")
    return InProcess(settings) if workers == 1 else Processes(settings, workers)
