"""The analysis pool: measures every checkpoint as soon as it exists, apart from training.

Driver-side and non-blocking: ``submit`` queues a checkpoint, ``pump`` hands queued work to idle
measuring processes and collects finished results without waiting; only ``drain`` blocks. A process
that dies is replaced and its checkpoint retried once, so one crash cannot wedge the pool. Processes
start on demand, up to ``size``: none before the first checkpoint, so they never slow the first trials'
start-up. Once the storage is known to be unreachable (``check_storage``) the pool halts: it hands out no
more work, since every measurement would only wait out the storage client's retries to fail, and what is
still queued is left for the rerun.

This module is the queueing alone and imports no Ray: it reaches its processes through ``Measurers``
(``raystudy.cluster.measurer.RayMeasurers`` in a run; in-process stand-ins in tests/test_pool.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Protocol

from raystudy.layout import checkpoint_trial


class ActorDied(Exception):
    """The measuring process is gone (OOM kill, segfault, node lost): its call may succeed on a new one."""


class MeasureFailed(Exception):
    """The measurement raised; ``str(err)`` is its one-line cause. The process is still usable."""


class Measurers(Protocol):
    """How the pool starts, calls and stops its measuring processes, and waits for their calls."""

    def start(self) -> Any:
        """A new measuring process (an actor handle); it may still be starting."""

    def call(self, actor: Any, path: str, trial: dict[str, Any] | None) -> Hashable:
        """Begin measuring ``path`` on ``actor``; returns a future without waiting."""

    def wait(self, futures: list, timeout: float) -> list:
        """The futures among ``futures`` that have finished, waiting up to ``timeout`` s for the first."""

    def result(self, future: Hashable) -> dict[str, Any]:
        """A finished future's result: the row's summary, or ``{"error": line}`` for a checkpoint that
        cannot be measured. Raises ``ActorDied`` or ``MeasureFailed``."""

    def stop(self, actor: Any) -> None:
        """End the process (no waiting)."""


@dataclass
class _Job:
    path: str
    tries: int = 0
    first: bool = False  # its block's first checkpoint: measured ahead of the queue


@dataclass
class MeasurePool:
    """``trials``: trial id -> the trial as the study file says now (``Trial.to_dict``), so a checkpoint is
    measured under the current measurement settings, not those it was trained with. ``on_result(out)`` is
    called for every checkpoint measured and ``on_error(line)`` for every one that could not be, whichever
    call (submit, pump, drain) collected it: every checkpoint submitted is reported exactly once, except
    those a halted pool leaves unmeasured (``left``).
    ``metrics`` (``raystudy.cluster.metrics`` in a run) hears the queue depth and each measurement's
    seconds. ``storage_check()`` (optional) is asked after a failure whether the storage can be reached: the
    line saying it cannot, or None (see ``check_storage``)."""
    measurers: Measurers
    trials: dict[str, dict[str, Any]] = field(default_factory=dict)
    size: int = 1
    on_result: Callable[[dict[str, Any]], None] | None = None
    on_error: Callable[[str], None] | None = None
    metrics: Any = None
    storage_check: Callable[[], str | None] | None = None
    halted: str | None = None  # why the pool stopped handing out work (the storage's line), or None
    queue: list[_Job] = field(default_factory=list)
    done: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._idle: list[Any] = []
        self._alive = 0  # processes started and not dead: idle + running
        self._running: dict[Hashable, tuple[Any, _Job, float]] = {}
        self._seen: set[str] = set()
        self._blocks: set[str | None] = set()  # blocks with a checkpoint queued already

    @property
    def depth(self) -> int:
        """Checkpoints still to be measured in this run: running, and queued unless the pool has halted."""
        return (0 if self.halted else len(self.queue)) + len(self._running)

    @property
    def left(self) -> list[str]:
        """Checkpoints a halted pool leaves unmeasured (queued, or submitted after it halted)."""
        return [job.path for job in self.queue] if self.halted else []

    def check_storage(self) -> str | None:
        """After a failure (a measurement's here; a trial's in a run), ask ``storage_check`` whether the storage
        can still be reached; if it cannot, halt: no checkpoint is handed out after that, the ones running
        finish (they fail, or write their row), and the queue is left for the rerun (``left``: no row is
        lost, only not written yet). Returns the line that halted the pool, or None. Cost: one probe of the
        storage while it is reachable (two requests to an object store); none once halted."""
        if self.halted is None and self.storage_check is not None:
            self.halted = self.storage_check()
        return self.halted

    def submit(self, path: str) -> list[dict[str, Any]]:
        """Queue a checkpoint (once: Tune may repeat a result) and pump; returns what ``pump`` collected.
        First come, first measured, except that each block's first checkpoint goes ahead of every other
        block's later ones: a block's metrics fail (or tell the progress line what they cost) in the
        first minutes of a study, not after the blocks queued before it."""
        if path not in self._seen:
            self._seen.add(path)
            block = (self.trials.get(checkpoint_trial(path)) or {}).get("block")
            if block is None or block in self._blocks:
                self.queue.append(_Job(path))
            else:
                self._blocks.add(block)
                ahead = next((i for i, job in enumerate(self.queue) if not job.first), len(self.queue))
                self.queue.insert(ahead, _Job(path, first=True))
        return self.pump()

    def pump(self) -> list[dict[str, Any]]:
        """Start queued work on idle processes (starting new ones up to ``size``) and return the results
        finished since the last call. Never waits."""
        finished: list[dict[str, Any]] = []
        while True:
            self._dispatch()
            ready = self.measurers.wait(list(self._running), timeout=0) if self._running else []
            for future in ready:
                finished.extend(self._collect(future))
            if not (ready and self.queue):  # a process freed up with work waiting: hand it on at once
                break
        if self.metrics:
            self.metrics.queue_depth(self.depth)
        return finished

    def _dispatch(self) -> None:
        if self.halted:
            return
        while self.queue and not self._idle and self._alive < self.size:
            self._idle.append(self.measurers.start())
            self._alive += 1
        while self.queue and self._idle:
            actor, job = self._idle.pop(), self.queue.pop(0)
            future = self.measurers.call(actor, job.path, self.trials.get(checkpoint_trial(job.path)))
            self._running[future] = (actor, job, time.perf_counter())

    def _collect(self, future: Hashable) -> list[dict[str, Any]]:
        actor, job, t0 = self._running.pop(future)
        try:
            out = self.measurers.result(future)
        except ActorDied:
            # The process died (OOM, segfault): a new one starts on demand; the checkpoint is retried once.
            self._alive -= 1
            job.tries += 1
            if job.tries < 2:
                self.queue.append(job)
            else:
                self._error(f"{job.path}: measuring process died twice")
            return []
        except MeasureFailed as err:
            self._idle.append(actor)
            self._error(f"{job.path}: measurement failed: {err}")
            self.check_storage()
            return []
        self._idle.append(actor)
        if "error" in out:
            self._error(out["error"])
            self.check_storage()
            return []
        if self.metrics:
            self.metrics.measured(time.perf_counter() - t0)
        self.done.append(out)
        if self.on_result:
            self.on_result(out)
        return [out]

    def _error(self, line: str) -> None:
        self.errors.append(line)
        if self.on_error:
            self.on_error(line)

    def drain(self, tick: Callable[[], None] | None = None) -> None:
        """Block until every queued checkpoint is measured (results go to ``on_result``), or, once the pool
        has halted, until the measurements running have ended; ``tick()`` is called about once a second
        meanwhile (the progress line)."""
        while self.depth:
            if self._running:
                self.measurers.wait(list(self._running), timeout=1.0)
            self.pump()
            if tick:
                tick()

    def shutdown(self) -> None:
        for actor in self._idle + [a for a, _, _ in self._running.values()]:
            self.measurers.stop(actor)
        self._idle, self._running, self._alive = [], {}, 0
