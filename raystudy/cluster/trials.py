"""Ray Tune fans the trials out; each trial trains through Ray Train (Train V2 API).

Each Tune trial is a *function trainable* that builds a ``TorchTrainer`` and calls ``fit()``.
With ``workers: 0`` Train runs in the trial's own process (local mode), so the trial holds the real
CPUs/GPU; with ``workers: N`` the trial driver holds a token CPU and Train's workers hold the real
resources; with N > 1 they train data-parallel (``raystudy.train.ddp``: each worker a shard of every
batch, gradients averaged, the single-process result up to reduction order). Every checkpoint is
written to the study's storage by the training loop itself (rank 0 alone; one layout for local and
distributed mode) and its path reported to Train and on to Tune, where a callback hands it to the
analysis pool without blocking. A trial whose process dies is retried (Tune's ``FailureConfig``, and
Train's for real workers) and its loop resumes from the trial's resume point on storage.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
from typing import Any, Callable

import ray
from ray import train, tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from raystudy.cluster import metrics
from raystudy.cluster.measurer import pool_reserves
from raystudy.cluster.pool import MeasurePool
from raystudy.layout import ray_dir
from raystudy.trial import Resources, Trial
from raystudy.storage import Store

DRIVER_CPU = 0.01  # a trial driver with real workers must not hold a CPU they need (nested deadlock)
# How often Train's controller collects its workers' reports (Ray's default: 2 s). A worker's result queue
# holds one report, so a second report blocks the worker until the next poll: with a metrics report and a
# checkpoint report per epoch, Ray's default idled every worker up to 2 s an epoch (a tiny DDP trial of five
# reports took 19 s instead of 11). Train passes this variable on from the process calling ``fit`` (the Tune
# trial) to its controller; a value the user sets wins.
CONTROLLER_POLL = ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")


class _OncePerStudy(logging.Filter):
    """Drops Ray Train's "Running in local mode..." notice, logged by every local-mode trial (44 times in
    the smoke study); ``run_trials`` says it once instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Running in local mode")


logging.getLogger("ray.train.v2.api.config").addFilter(_OncePerStudy())


def _train_worker(config: dict[str, Any]) -> None:
    import torch
    from raystudy.train.ddp import DataParallel
    from raystudy.train.loop import train_trial

    trial, store = Trial.from_dict(config["trial"]), Store(config["store"])
    store.fence = config.get("fence")  # raystudy.lock.Fence: no checkpoint is written once the run lost its lock
    res = trial.resources
    torch.set_num_threads(max(1, int(res.cpus)))  # oversubscribing cores slows every trial
    local = res.workers == 0
    ctx = None if local else train.get_context()  # inside a Tune trial (local mode) Ray forbids the call
    world = ctx.get_world_size() if ctx else 1
    device = torch.device("cpu")
    if res.gpus > 0 and torch.cuda.is_available():
        # A worker's own GPU: Train lets the workers of a node see all of its GPUs (for NCCL).
        device = torch.device("cuda") if local else ray.train.torch.get_device()
        if res.gpus < 1:  # Ray's GPU shares are logical: cap the real memory ourselves
            torch.cuda.set_per_process_memory_fraction(res.gpus, device)
    parallel = None
    if world > 1:  # data-parallel: each worker trains its shard of every batch; rank 0 writes the files
        from ray.train.torch import prepare_model
        parallel = DataParallel(ctx.get_world_rank(), world, wrap=lambda m: prepare_model(m, move_to_device=device))

    # Local mode runs inside the Tune trial itself, where Ray forbids ray.train.report: there the
    # result goes straight to Tune. Real workers report to Train (every rank, the same number of
    # times: a report is a barrier); TuneReportCallback forwards rank 0's.
    report = tune.report if local else train.report

    train_trial(trial, store, report=report, device=device, parallel=parallel)


def run_trial(config: dict[str, Any], trials: dict[str, dict], store_uri: str, max_failures: int = 2,
              fence=None) -> None:
    """Tune function trainable: one grid point, trained by a ``TorchTrainer``. With real workers, Train
    restarts a worker group that lost a worker up to ``max_failures`` times; the loop picks up from the
    trial's resume point either way (Tune retries a trial whose own process died, see ``run_trials``)."""
    trial, store = trials[config["trial_id"]], Store(store_uri)
    res = Resources.model_validate(trial["resources"])  # shipped as a dict (Trial.to_dict)
    if res.workers == 0:
        scaling = train.ScalingConfig(num_workers=0)
        callbacks, failure = [], None  # local mode has no workers to restart: Tune retries the trial
    else:
        scaling = train.ScalingConfig(num_workers=res.workers, use_gpu=res.gpus > 0,
                                      resources_per_worker={"CPU": res.cpus, "GPU": res.gpus})
        callbacks, failure = [TuneReportCallback()], train.FailureConfig(max_failures=max_failures)
        os.environ.setdefault(*CONTROLLER_POLL)
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"trial": trial, "store": store_uri, "fence": fence},
        scaling_config=scaling,
        # Same name + storage on a rerun: Train picks the run up where it stopped. Train's state goes
        # through the study's own filesystem (local or object store), like everything else.
        run_config=train.RunConfig(name=trial["trial_id"], storage_path=ray_dir(store, "train"),
                                   storage_filesystem=store.fs, callbacks=callbacks, failure_config=failure),
    )
    trainer.fit()


def trial_resources(trial: dict) -> tune.PlacementGroupFactory:
    """What a Tune trial itself holds: the real CPUs/GPU in local mode; a token CPU for the driver of
    real workers, which Train places itself (holding theirs here too would deadlock nested Train)."""
    res = Resources.model_validate(trial["resources"])
    if res.workers == 0:
        return tune.PlacementGroupFactory([{"CPU": res.cpus, "GPU": res.gpus}])
    return tune.PlacementGroupFactory([{"CPU": DRIVER_CPU}])


def max_concurrent(trials: list[Trial], pool_cpus: float, pool_gpus: float, cap: int | None = None,
                   total: dict[str, float] | None = None) -> int:
    """Trials that fit at once beside the analysis pool (which reserves ``pool_cpus``, ``pool_gpus``: see
    ``measurer.pool_reserves``), counting what Train workers really need (plus their driver's token CPU),
    so trial drivers never hold resources their workers wait for. ``cap`` (the study's
    ``max_concurrent_trials``) overrides the count: an autoscaling cluster is smaller at the start than it
    will become. ``total``: the cluster's resources (default: Ray's, the one call made)."""
    if cap:
        return cap
    total = ray.cluster_resources() if total is None else total
    cpu = max(total.get("CPU", 0) - pool_cpus, 0)
    gpu = max(total.get("GPU", 0) - pool_gpus, 0)
    fits = []
    for t in trials:
        r, n = t.resources, max(t.resources.workers, 1)
        need_cpu = r.cpus * n + (DRIVER_CPU if r.workers else 0)
        fits.append(min(cpu / need_cpu, gpu / (r.gpus * n) if r.gpus else float("inf")))
    return max(1, min(math.floor(min(fits) + 1e-9), len(trials)))


class FeedPool(tune.Callback):
    """Hands every reported checkpoint to the analysis pool the moment Tune sees it (the pool reports what
    it measured itself); ``on_trial_end(trial_id, failed, seconds)`` hears of every trial that ends, ``tick()`` of every
    step of Tune's loop (the progress line), ``on_first_start()`` of the first trial's process starting."""

    def __init__(self, pool: MeasurePool, on_trial_end: Callable[[str, bool, float | None], None] | None = None,
                 tick: Callable[[], None] | None = None, on_first_start: Callable[[], None] | None = None):
        self.pool, self.on_trial_end, self.tick, self.on_first_start = pool, on_trial_end, tick, on_first_start
        self.ended: set[str] = set()  # trial ids that completed or errored (the rest were interrupted)

    def on_trial_start(self, iteration, trials, trial, **info):
        if self.on_first_start:
            self.on_first_start()
            self.on_first_start = None

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("checkpoint"):
            self.pool.submit(result["checkpoint"])
        self.pool.pump()

    def on_step_end(self, iteration, trials, **info):
        self.pool.pump()
        if self.tick:
            self.tick()

    def _ended(self, trial, failed: bool) -> None:
        self.ended.add(trial.config["trial_id"])
        metrics.trial_finished(failed=failed)
        if self.on_trial_end:
            # Tune's time_total_s: this trial's seconds in its process (retries and resumes included)
            self.on_trial_end(trial.config["trial_id"], failed,
                              (getattr(trial, "last_result", None) or {}).get("time_total_s"))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trial, failed=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trial, failed=True)
        # A trial that failed on unreachable storage halts the pool: a blocking probe (seconds at most), until then
        self.pool.check_storage()


class StopOnHalt(tune.Stopper):
    """Ends the experiment once the measuring pool has halted on unreachable storage (``MeasurePool.halted``):
    every trial still to start would only fail against it, up to ``max_failures`` times each (a large study
    would churn for hours). Trials stopped this way end as a Ctrl-C leaves them: unfinished, resumed by the
    rerun. Never stops a single trial."""

    def __init__(self, pool: MeasurePool | None):
        self.pool = pool

    def __reduce__(self):
        # Tune pickles its stopper into the experiment's state file. The pool (its callbacks hold the
        # console) cannot be pickled and means nothing to another process: a restored stopper has none.
        return StopOnHalt, (None,)

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.pool is not None and self.pool.halted is not None


def loggers(names: list[str], study: str) -> list[tune.Callback]:
    """Tune callbacks for the study's opt-in loggers. TensorBoard needs none: Tune writes its event files by
    itself whenever tensorboardX is installed (the preflight checks that it is when the study asks)."""
    out: list[tune.Callback] = []
    if "mlflow" in names:
        from ray.air.integrations.mlflow import MLflowLoggerCallback
        out.append(MLflowLoggerCallback(experiment_name=study, save_artifact=False))
    if "wandb" in names:
        from ray.air.integrations.wandb import WandbLoggerCallback
        out.append(WandbLoggerCallback(project=study))
    return out


def run_trials(trials: list[Trial], store: Store, pool: MeasurePool, verbose: int = 0,
               cap: int | None = None, max_failures: int = 2, logger_names: tuple[str, ...] = (),
               on_trial_end: Callable[[str, bool, float | None], None] | None = None,
               tick: Callable[[], None] | None = None,
               fence=None, on_first_start: Callable[[], None] | None = None) -> tuple[dict[str, str], list[str]]:
    """Train ``trials`` with Ray Tune, feeding checkpoints to ``pool``; a trial whose process dies (or
    whose training raises) is retried up to ``max_failures`` times (the study's ``max_failures``), each
    time from its last resume point. ``verbose`` is Tune's own console verbosity (0 silent, 1 a status
    table every 30 s, 2 every trial's configuration and results); ``on_trial_end``/``tick`` feed the
    progress line, ``on_first_start`` hears when the first trial's process has started; ``fence``
    (raystudy.lock.Fence) is checked by every trial before each checkpoint it writes. Returns
    ``({trial_id: error}`` for the trials that failed after their retries, ``[trial_id]`` of those a Ctrl-C
    stopped before they ended)."""
    by_id = {t.trial_id: t.to_dict() for t in trials}
    local = sum(t.resources.workers == 0 for t in trials)
    if local and verbose:
        print(f"{local} of {len(trials)} trials train in Ray Train's local mode (workers: 0): inside their Tune "
              "trial's process, no worker start-up", flush=True)
    trainable = tune.with_parameters(run_trial, trials=by_id, store_uri=store.uri, max_failures=max_failures,
                                     fence=fence)
    trainable = tune.with_resources(trainable, lambda config: trial_resources(by_id[config["trial_id"]]))
    feed = FeedPool(pool, on_trial_end, tick, on_first_start)
    tuner = tune.Tuner(
        trainable,
        param_space={"trial_id": tune.grid_search(list(by_id))},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=max_concurrent(trials, *pool_reserves(pool.size, pool.measurers.gpus), cap),
            trial_name_creator=lambda t: t.config["trial_id"],
            trial_dirname_creator=lambda t: t.config["trial_id"],
            reuse_actors=True,
        ),
        # A path on the Store's filesystem (not a URI): pyarrow gives Ray the same endpoint and options.
        run_config=tune.RunConfig(name="tune", storage_path=ray_dir(store), storage_filesystem=store.fs,
                                  verbose=verbose, stop=StopOnHalt(pool), callbacks=[feed, *loggers(list(logger_names), trials[0].study)],
                                  failure_config=tune.FailureConfig(max_failures=max_failures)),
    )
    # Tune prints its experiment banner and TensorBoard hint whatever ``verbose`` says
    # (ray/tune/experimental/output.py): silenced with the rest at 0. The progress line and the [measured]
    # lines hold their own handle on stdout, so they still show.
    with contextlib.redirect_stdout(open(os.devnull, "w")) if not verbose else contextlib.nullcontext():
        grid = tuner.fit()
    failed = {}
    for result in grid:
        if result.error is not None:
            first = str(getattr(result.error, "cause", None) or result.error).strip().splitlines()
            failed[result.config["trial_id"]] = first[-1] if first else repr(result.error)
    return failed, [t for t in by_id if t not in feed.ended]
