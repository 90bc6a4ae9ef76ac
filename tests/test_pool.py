"""The analysis pool's queueing, retries and reporting, without Ray: each measuring "process" is an in-process
worker on its own thread, reached through the same ``Measurers`` interface ``RayMeasurers`` gives the pool in
a run. The real ``Measurer`` measures real checkpoints here too (a corrupt one becomes an error line)."""
from __future__ import annotations

import ast
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

import polars as pl
import pytest

from raystudy.cluster.pool import ActorDied, MeasureFailed, MeasurePool

pytestmark = pytest.mark.usefixtures("one_thread")


class Process:
    """One stand-in measuring process: a worker object served by one thread, in call order, as a Ray actor
    serves its calls. ``kills``: path -> how many more calls with it kill their process (shared by all);
    once dead, every call fails as it does on a dead actor."""

    def __init__(self, worker, kills: dict[str, int]):
        self.worker, self.kills, self.dead = worker, kills, False
        self.thread = ThreadPoolExecutor(1)

    def run(self, path: str, trial):
        if self.dead:
            raise ActorDied("dead")
        if self.kills.get(path, 0) > 0:
            self.kills[path] -= 1
            self.dead = True
            raise ActorDied(f"killed while measuring {path}")
        try:
            return self.worker.measure(path, trial)
        except Exception as err:  # noqa: BLE001 - what an actor's raised task error is to the pool
            raise MeasureFailed(str(err)) from None


class ThreadMeasurers:
    """``pool.Measurers`` with in-process workers: ``make()`` builds each process's worker."""

    def __init__(self, make, kills: dict[str, int] | None = None):
        self.make, self.kills, self.started, self.stopped = make, dict(kills or {}), [], 0

    def start(self) -> Process:
        self.started.append(Process(self.make(), self.kills))
        return self.started[-1]

    def call(self, actor: Process, path: str, trial) -> Future:
        return actor.thread.submit(actor.run, path, trial)

    def wait(self, futures: list, timeout: float) -> list:
        return list(wait(futures, timeout=timeout, return_when=FIRST_COMPLETED).done)

    def result(self, future: Future):
        return future.result()

    def stop(self, actor: Process) -> None:
        self.stopped += 1
        actor.thread.shutdown(wait=False)


class Echo:
    """A worker that measures nothing: the row's summary from the path, in the order it was asked; waits for
    ``gate`` first (to let a queue build up); ``fail_on``: paths whose measurement raises."""
    order: list[str] = []

    def __init__(self, gate: threading.Event | None = None, fail_on: tuple[str, ...] = ()):
        self.gate, self.fail_on = gate, fail_on

    def measure(self, path: str, trial) -> dict:
        if self.gate:
            self.gate.wait(10)
        if path in self.fail_on:
            raise ValueError("loss is NaN at step 0")
        Echo.order.append(path)
        return {"trial_id": path.split("/")[-2], "epoch": int(path[-5:-3]), "status": "ok", "wall_s": 0.0,
                "trial": trial}


def _paths(n: int, trial: str = "t") -> list[str]:
    return [f"/s/checkpoints/{trial}{i % 2}/epoch_{i:02d}.pt" for i in range(n)]


def _pool(measurers, size: int = 1, trials=None):
    results, errors = [], []
    pool = MeasurePool(measurers, trials=trials or {}, size=size, on_result=results.append, on_error=errors.append)
    return pool, results, errors


def test_queue_order_once_each_and_processes_start_on_demand():
    Echo.order = []
    gate = threading.Event()
    measurers = ThreadMeasurers(lambda: Echo(gate))
    pool, results, errors = _pool(measurers, size=1, trials={"t0": {"trial_id": "t0"}})
    assert measurers.started == []  # no process before the first checkpoint
    paths = _paths(6)
    collected = []
    for path in paths + paths[:2]:  # Tune may report a checkpoint twice: measured once
        collected += pool.submit(path)
    assert len(measurers.started) == 1 and pool.depth == 6
    gate.set()
    pool.drain()
    assert Echo.order == paths  # first come, first measured
    assert [r["epoch"] for r in results] == list(range(6)) and not errors
    assert results[0]["trial"] == {"trial_id": "t0"} and results[1]["trial"] is None  # current settings passed on
    assert all(r in results for r in collected)
    pool.shutdown()
    assert measurers.stopped == 1


def test_each_blocks_first_checkpoint_goes_ahead_of_the_queue():
    """Blocks a (4 checkpoints queued first) and b: b's first checkpoint is measured right after a's first,
    then the queue in order; a retried or repeated checkpoint never jumps it again."""
    Echo.order = []
    gate = threading.Event()
    measurers = ThreadMeasurers(lambda: Echo(gate))
    a, b = _paths(4, "a"), _paths(4, "b")
    trials = {f"{x}{i}": {"trial_id": f"{x}{i}", "block": x} for x in "ab" for i in range(2)}
    pool, results, errors = _pool(measurers, size=1, trials=trials)
    for path in a + b + b[:1]:
        pool.submit(path)
    gate.set()
    pool.drain()
    # a[0] was dispatched at once (the process was idle); b[0] jumps a[1:], the rest keep their order
    assert Echo.order == [a[0], b[0], *a[1:], *b[1:]] and not errors
    pool.shutdown()


def test_every_result_reported_exactly_once_whichever_call_collects_it():
    """submit and pump return what they collected; drain collects the rest; on_result hears each once."""
    Echo.order = []
    pool, results, errors = _pool(ThreadMeasurers(Echo), size=3)
    collected = []
    for path in _paths(20):
        collected += pool.submit(path)
        collected += pool.pump()
    pool.drain()
    assert len(measurers_started := pool.measurers.started) == 3, measurers_started
    assert sorted(r["epoch"] for r in results) == list(range(20)) and not errors
    assert len({id(r) for r in collected}) == len(collected) and all(r in results for r in collected)
    assert pool.done == results and pool.depth == 0


def test_a_dead_process_is_replaced_and_its_checkpoint_retried_once():
    Echo.order = []
    p0, once, twice, p3 = _paths(4)
    measurers = ThreadMeasurers(Echo, kills={once: 1, twice: 2})
    pool, results, errors = _pool(measurers, size=1)
    for path in (p0, once, twice, p3):
        pool.submit(path)
    pool.drain()
    # `once` kills one process and is measured by its replacement; `twice` kills two and is given up on.
    assert sorted(Echo.order) == sorted([p0, once, p3]) and len(results) == 3
    assert errors == [f"{twice}: measuring process died twice"]
    assert len(measurers.started) == 3  # the first, then one per death while work was waiting
    pool.shutdown()
    assert measurers.stopped == 0  # the dead are not stopped again, and nothing else was left


def test_a_measurement_that_raises_is_one_line_and_the_process_goes_on():
    paths = _paths(3)
    measurers = ThreadMeasurers(lambda: Echo(fail_on=(paths[1],)))
    pool, results, errors = _pool(measurers, size=1)
    for path in paths:
        pool.submit(path)
    pool.drain()
    assert errors == [f"{paths[1]}: measurement failed: loss is NaN at step 0"]
    assert len(results) == 2 and len(measurers.started) == 1


def test_the_real_measurer_writes_rows_and_names_a_corrupt_checkpoint(write_study, tmp_path):
    """The Measurer a Ray actor runs, here in-process: a real checkpoint becomes a row on storage; a corrupt
    one an on_error line naming the file (no retry, no row)."""
    from raystudy.cluster.measurer import Measurer
    from raystudy.layout import checkpoint_path
    from raystudy.study import expand, load_study
    from raystudy.storage import Store
    from raystudy.train.loop import train_trial

    trial = expand(load_study(write_study("""
        name: p
        storage: {tmp}/runs
        blocks:
          - {name: c, family: circles, task: circles, factor: 0.5, model: mlp, model_args: {hidden: [8]},
             lr: 0.1, batch_size: 50, epochs: 1, checkpoints: [0, 1], metrics: [fisher_rao]}
        """)))[0]
    store = Store(str(tmp_path / "runs" / "p"))
    saved: list[str] = []
    train_trial(trial, store, report=lambda info: "checkpoint" in info and saved.append(info["checkpoint"]))
    corrupt = checkpoint_path(store, "c-other-1", 1)
    store.write_bytes(corrupt, b"not a checkpoint")
    measurers = ThreadMeasurers(lambda: Measurer(store.uri, threads=None, gpus=0.0))
    pool, results, errors = _pool(measurers, size=2, trials={trial.trial_id: trial.to_dict()})
    for path in [*saved, corrupt]:
        pool.submit(path)
    pool.drain()
    assert len(saved) == 2 and sorted(r["epoch"] for r in results) == [0, 1]
    assert len(errors) == 1 and corrupt in errors[0] and "\n" not in errors[0]
    rows = pl.read_parquet(f"{store.root}/results/**/*.parquet")
    assert sorted(rows["epoch"]) == [0, 1] and rows["fisher_rao"].null_count() == 0


def test_a_pool_halts_once_the_storage_is_unreachable():
    """A failure the storage check blames on the storage halts the pool: nothing more is handed out (queued or
    submitted later), drain returns, and the checkpoints left are named; a failure the check clears does not."""
    Echo.order = []
    paths = _paths(6)
    gate = threading.Event()
    checks: list[str] = []
    measurers = ThreadMeasurers(lambda: Echo(gate, fail_on=(paths[0], paths[1])))
    pool, results, errors = _pool(measurers, size=1)
    pool.storage_check = lambda: checks.append("probe") or (None if len(checks) == 1 else "storage: gone")
    for path in paths[:5]:
        pool.submit(path)
    gate.set()
    pool.drain()
    assert checks == ["probe", "probe"] and pool.halted == "storage: gone"  # paths[0]: storage fine; paths[1]: not
    assert len(errors) == 2 and Echo.order == [] and not results
    pool.submit(paths[5])
    pool.drain()
    assert pool.left == paths[2:] and pool.depth == 0 and len(measurers.started) == 1
    assert pool.check_storage() == "storage: gone" and len(checks) == 2  # no probe once halted


def test_unreachable_s3_halts_the_real_measurers_and_the_rerun_measures_the_rest(write_study, tmp_path):
    """The real Measurer, in-process, on checkpoints in moto's S3 server, which stops: the first measurement
    fails, the probe finds the bucket unreachable and the pool hands out nothing more (before, each queued
    checkpoint waited out the client's retries to fail); the server back, a new pool measures what was left."""
    from raystudy.cluster.measurer import Measurer
    from raystudy.faults import unreachable
    from raystudy.study import expand, load_study
    from raystudy.storage import Store
    from raystudy.train.loop import train_trial
    from support.s3_server import restart, s3_bucket

    servers: list = []
    with s3_bucket(servers=servers) as bucket:
        trial = expand(load_study(write_study(f"""
            name: p
            storage: {bucket}/runs
            blocks:
              - {{name: c, family: circles, task: circles, factor: 0.5, model: mlp, model_args: {{hidden: [8]}},
                 lr: 0.1, batch_size: 50, epochs: 3, checkpoints: [0, 1, 2, 3], metrics: [fisher_rao]}}
            """)))[0]
        store = Store(f"{bucket}/runs/p")
        saved: list[str] = []
        train_trial(trial, store, report=lambda info: "checkpoint" in info and saved.append(info["checkpoint"]))
        servers[-1].stop()
        measurers = ThreadMeasurers(lambda: Measurer(store.uri, threads=None, gpus=0.0))
        pool, results, errors = _pool(measurers, size=1, trials={trial.trial_id: trial.to_dict()})
        pool.storage_check = lambda: unreachable(store)
        t0 = time.perf_counter()
        for path in saved:
            pool.submit(path)
        pool.drain()
        assert time.perf_counter() - t0 < 15  # one measurement's retries and one probe's, not four
        assert len(saved) == 4 and len(errors) == 1 and not results, errors
        assert pool.halted.startswith(f"storage: {store.uri}: cannot reach bucket 'raystudy-test'"), pool.halted
        assert pool.left == saved[1:]
        pool.shutdown()
        servers.append(restart(servers[-1]))
        pool, results, errors = _pool(measurers, size=1, trials={trial.trial_id: trial.to_dict()})
        for path in saved:
            pool.submit(path)
        pool.drain()
        assert sorted(r["epoch"] for r in results) == [0, 1, 2, 3] and not errors and pool.halted is None


def test_the_pool_imports_no_ray():
    tree = ast.parse(Path(__file__).parents[1].joinpath("raystudy/cluster/pool.py").read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    assert not [m for m in names if m == "ray" or m.startswith("ray.") or m.startswith("raystudy.cluster.")]
