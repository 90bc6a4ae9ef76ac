"""The measuring processes behind the analysis pool (``pool.MeasurePool``): one ``Measurer`` per Ray actor.

Where they run, and why (issue 15: "measuring never idles a training slot"):

- **CPU: shared, not reserved.** A measurer asks Ray for no CPU (``num_cpus=0``) and runs torch at
  ``analysis.cpus`` threads (at least one), so Tune packs trials onto every CPU and the measurers share the
  cores with them. Reserving CPUs for the pool left them idle whenever no checkpoint was waiting (most of
  a run) and, on 2 cores, halved the trials running at once. CPU time is shared by the kernel at no cost
  beyond the threads themselves, so the only rule is to keep ``actors x threads`` within the node's CPUs
  (``resources.check_resources``). And a CPU measurer runs at the lowest scheduling priority, nice 19,
  below the trials: Ray starts every worker process at nice 15 (``RAY_worker_niceness``), so a trial
  weighs 36 in the kernel's fair share and a measurer 15. Where both want a core, training gets ~70% of
  it and measuring the rest, and measuring has every cycle training leaves (between trials, while a trial
  waits on storage, after the last one). Measured on the smoke study (2 cores, idle machine): the run's
  wall is the same (206-207 s) whether measurers share at nice 19 or only take idle cycles
  (``SCHED_IDLE``; training then ends 30 s sooner but no checkpoint is measured until it does, so the
  ETA stays unknown for most of the run); left at Ray's nice 15, level with the trials, they time-slice
  evenly (one back-to-back pair: 184 s against 162 s at nice 19, within the runs' spread). The
  progress line's ETA counts a CPU measurement by its CPU seconds, not its wall clock, which includes
  the wait (``run.measuring_cost``). Processes start on demand (the first checkpoint), not before the
  first trial, and go to nodes that have CPUs (a cluster.yaml head advertises none, to keep work off it):
  a request for no resources is feasible anywhere, and Ray prefers the driver's node for it.
- **GPU: reserved.** GPU memory, unlike CPU time, cannot be shared by time-slicing: two processes that
  each assume the whole card run out of memory. A measurer on the GPU (``analysis.gpus`` > 0) reserves its
  fractional share, exactly as a trial does, and caps its real memory to it
  (``set_per_process_memory_fraction``), so trials and measurers packed on one card never overdraw it.
  A fraction of a card (0.25 beside ``gpus: 0.25`` trials) costs one slot; measuring on the CPU costs none.
- **Memory.** Each measurer holds one model at a time and the tasks it measured recently (``measure``'s
  cache: 16 at most; a digits or toy task is kilobytes to a few MB, CIFAR-10 ~180 MiB of uint8 images),
  for the whole run. Ray's memory monitor kills the newest process when a node runs short; the pool then
  retries the checkpoint once on a fresh measurer.
"""
from __future__ import annotations

import os
from typing import Any, Hashable

import ray

from raystudy.checkpoints import CheckpointError
from raystudy.cluster.pool import ActorDied, MeasureFailed

NICE = 19  # a CPU measurer's scheduling priority: the lowest, below the trials' 15 (Ray's worker niceness)
SUMMARY = ("trial_id", "epoch", "status", "wall_s", "cpu_s", "device", "test_acc", "test_loss", "sam_sharpness", "hessian_lambda_max")


class Measurer:
    """One measuring process. Holds cached tasks between checkpoints; writes each row itself, so a
    result is on storage before the driver hears of it and a driver crash loses nothing. ``threads``:
    torch's CPU threads (None leaves them as they are); ``gpus``: its share of a GPU (0: measure on CPU);
    ``nice``: lower the calling thread's scheduling priority by this much (Linux: per thread; an actor
    measures in the thread that built it)."""

    def __init__(self, store_uri: str, threads: int | None, gpus: float, fence=None, nice: int = 0):
        import torch
        from raystudy.storage import Store
        if threads:
            torch.set_num_threads(threads)
        if nice:
            os.nice(nice)
        self.store = Store(store_uri)
        self.store.fence = fence  # raystudy.lock.Fence: no row is written once the run has lost its lock
        self.device = "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"
        if self.device == "cuda" and gpus < 1:  # Ray's GPU shares are logical: cap the real memory ourselves
            torch.cuda.set_per_process_memory_fraction(gpus)

    def measure(self, path: str, trial: dict[str, Any] | None = None) -> dict[str, Any]:
        """Measure one checkpoint and write its row; returns the row's summary, or ``{"error": line}``
        when the checkpoint cannot be read (corrupt, truncated, foreign)."""
        from raystudy.measure import measure_checkpoint, write_row
        from raystudy.trial import Trial
        try:
            row = measure_checkpoint(self.store, path, device=self.device,
                                     trial=Trial.from_dict(trial) if trial else None)
        except CheckpointError as err:
            return {"path": path, "error": str(err), "corrupt": True}
        write_row(self.store, row)
        return {k: row.get(k) for k in SUMMARY}


def actor_options(gpus: float) -> dict[str, Any]:
    """What one measuring actor asks Ray for: no CPU (it shares the trials' cores), its GPU share when it
    measures on a GPU. See the module's docstring."""
    return {"num_cpus": 0, "num_gpus": gpus}


def pool_reserves(actors: int, gpus: float) -> tuple[float, float]:
    """(CPU, GPU) the whole pool withholds from training: no CPU, ``actors x gpus`` of GPU."""
    return 0.0, actors * gpus


class RayMeasurers:
    """``pool.Measurers`` through Ray: each measurer a ``Measurer`` actor with ``actor_options``."""

    def __init__(self, store_uri: str, threads: int, gpus: float = 0.0, fence=None):
        self.store_uri, self.threads, self.gpus, self.fence = store_uri, max(1, threads), gpus, fence
        self._remote = ray.remote(Measurer)
        self._started = 0

    def _placement(self) -> dict[str, Any]:
        """CPU measurers go round-robin to live nodes with CPUs (soft: anywhere if that node is gone); a GPU
        share places itself."""
        if self.gpus > 0:
            return {}
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        nodes = sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) > 0)
        if not nodes:
            return {}
        node = nodes[self._started % len(nodes)]
        return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=True)}

    def start(self) -> Any:
        opts = {**actor_options(self.gpus), **self._placement()}
        self._started += 1
        # On the CPU: the cycles training leaves, not a share of the trials' (see the module's docstring)
        return self._remote.options(**opts).remote(self.store_uri, self.threads, self.gpus, self.fence,
                                                   nice=NICE if self.gpus == 0 else 0)

    def call(self, actor: Any, path: str, trial: dict[str, Any] | None) -> Hashable:
        return actor.measure.remote(path, trial)

    def wait(self, futures: list, timeout: float) -> list:
        if not futures:
            return []
        ready, _ = ray.wait(futures, num_returns=len(futures) if timeout == 0 else 1, timeout=timeout)
        return ready

    def result(self, future: Hashable) -> dict[str, Any]:
        try:
            return ray.get(future)
        except ray.exceptions.RayActorError as err:
            raise ActorDied(str(err).splitlines()[0] if str(err) else "actor died") from None
        except ray.exceptions.RayTaskError as err:
            lines = str(err.cause).strip().splitlines() or [type(err.cause).__name__]
            raise MeasureFailed(lines[0]) from None

    def stop(self, actor: Any) -> None:
        ray.kill(actor)
