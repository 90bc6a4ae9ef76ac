"""The analysis actor pool: measures every checkpoint as soon as it exists, apart from training.

Driver-side and non-blocking: ``submit`` queues a checkpoint, ``pump`` hands queued work to idle
actors and collects finished results with ``ray.wait(timeout=0)``; only ``drain`` blocks. An actor
that dies is replaced and its checkpoint retried once, so one crash cannot wedge the pool.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import ray

from raystudy.checkpoints import CheckpointError
from raystudy.cluster import metrics
from raystudy.layout import checkpoint_trial


@ray.remote
class Measurer:
    """One measuring process. Holds cached tasks between checkpoints; writes each row itself, so a
    result is on storage before the driver hears of it and a driver crash loses nothing."""

    def __init__(self, store_uri: str, threads: int, gpus: float, fence=None):
        import torch
        from raystudy.storage import Store
        torch.set_num_threads(threads)
        self.store = Store(store_uri)
        self.store.fence = fence  # raystudy.lock.Fence: no row is written once the run has lost its lock
        self.device = "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"

    def measure(self, path: str, trial: dict[str, Any] | None = None) -> dict[str, Any]:
        from raystudy.measure import measure_checkpoint, write_row
        from raystudy.trial import Trial
        try:
            row = measure_checkpoint(self.store, path, device=self.device,
                                     trial=Trial.from_dict(trial) if trial else None)
        except CheckpointError as err:
            return {"path": path, "error": str(err), "corrupt": True}
        write_row(self.store, row)
        keep = ("trial_id", "epoch", "status", "wall_s", "test_acc", "test_loss", "sam_sharpness",
                "hessian_lambda_max")
        return {k: row.get(k) for k in keep}


@dataclass
class _Job:
    path: str
    tries: int = 0


@dataclass
class MeasurePool:
    """``trials``: trial id -> the trial as the study file says now (``Trial.to_dict``), so a checkpoint is
    measured under the current measurement settings, not those it was trained with. ``on_result(out)`` is
    called for every checkpoint measured and ``on_error(line)`` for every one that could not be, whichever
    call (submit, pump, drain) collected it: no result goes unreported."""
    store_uri: str
    trials: dict[str, dict[str, Any]] = field(default_factory=dict)
    size: int = 1
    cpus: float = 1.0
    gpus: float = 0.0
    queue: list[_Job] = field(default_factory=list)
    done: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    on_result: Callable[[dict[str, Any]], None] | None = None
    on_error: Callable[[str], None] | None = None
    fence: Any = None  # raystudy.lock.Fence each Measurer checks before it writes

    def __post_init__(self) -> None:
        self._idle = [self._new_actor() for _ in range(self.size)]
        self._running: dict[ray.ObjectRef, tuple[Any, _Job, float]] = {}
        self._seen: set[str] = set()

    def _new_actor(self):
        opts = {"num_cpus": self.cpus, "num_gpus": self.gpus}
        return Measurer.options(**opts).remote(self.store_uri, max(1, int(self.cpus)), self.gpus, self.fence)

    @property
    def depth(self) -> int:
        return len(self.queue) + len(self._running)

    def submit(self, path: str) -> list[dict[str, Any]]:
        """Queue a checkpoint (once: Tune may repeat a result) and pump; returns what ``pump`` collected."""
        if path not in self._seen:
            self._seen.add(path)
            self.queue.append(_Job(path))
        return self.pump()

    def pump(self) -> list[dict[str, Any]]:
        """Start queued work on idle actors and return results finished since the last call."""
        while self.queue and self._idle:
            actor, job = self._idle.pop(), self.queue.pop(0)
            trial_id = checkpoint_trial(job.path)
            ref = actor.measure.remote(job.path, self.trials.get(trial_id))
            self._running[ref] = (actor, job, time.perf_counter())
        finished: list[dict[str, Any]] = []
        if self._running:
            ready, _ = ray.wait(list(self._running), num_returns=len(self._running), timeout=0)
            for ref in ready:
                finished.extend(self._collect(ref))
        metrics.queue_depth(self.depth)
        if finished and self.queue:
            return finished + self.pump()
        return finished

    def _collect(self, ref: ray.ObjectRef) -> list[dict[str, Any]]:
        actor, job, t0 = self._running.pop(ref)
        try:
            out = ray.get(ref)
        except ray.exceptions.RayActorError:
            # The process died (OOM, segfault): replace it and retry the checkpoint once.
            self._idle.append(self._new_actor())
            job.tries += 1
            if job.tries < 2:
                self.queue.append(job)
            else:
                self._error(f"{job.path}: measuring process died twice")
            return []
        except ray.exceptions.RayTaskError as err:
            self._idle.append(actor)
            self._error(f"{job.path}: measurement failed: {str(err.cause).splitlines()[0]}")
            return []
        self._idle.append(actor)
        if "error" in out:
            self._error(out["error"])
            return []
        metrics.measured(time.perf_counter() - t0)
        self.done.append(out)
        if self.on_result:
            self.on_result(out)
        return [out]

    def _error(self, line: str) -> None:
        self.errors.append(line)
        if self.on_error:
            self.on_error(line)

    def drain(self, tick: Callable[[], None] | None = None) -> None:
        """Block until every queued checkpoint is measured (results go to ``on_result``); ``tick()`` is
        called about once a second meanwhile (the progress line)."""
        while self.depth:
            if self._running:
                ray.wait(list(self._running), num_returns=1, timeout=1.0)
            self.pump()
            if tick:
                tick()

    def shutdown(self) -> None:
        for actor in self._idle + [a for a, _, _ in self._running.values()]:
            ray.kill(actor)
