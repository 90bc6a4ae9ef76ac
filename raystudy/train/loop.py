"""Train one trial and checkpoint it at the study's epochs. Plain torch: no Ray in here.

Determinism: the initial weights come from ``trial.init_seed``; the batch order and augmentation of
epoch ``e`` come from generators seeded by ``(shuffle_seed, e)`` and ``(seed, e)``. Nothing depends
on how many epochs ran in this process, so a trial resumed from a checkpoint continues exactly as
an uninterrupted one would. The epoch itself (data placement, steps, precision) is ``epoch.py``.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from raystudy.checkpoints import checkpoint_path, delete_resume_point, save_checkpoint, save_resume_point
from raystudy.build import build_model, load_trial_task, loss_fn_for  # noqa: F401 (re-exported)
from raystudy.repair import start_point
from raystudy.storage import Store
from raystudy.tasks.base import Task
from raystudy.train.ddp import DataParallel
from raystudy.train.epoch import BatchSchedule, TrainingData, TrainStep, train_epoch
from raystudy.train.sam import SAM
from raystudy.trial import ResumeEvery, Trial

Report = Callable[[dict[str, Any]], None]


@dataclass
class TrainSummary:
    trial_id: str
    epochs_run: int
    resumed_from: int | None
    wall_s: float


def _optimizer(trial: Trial, model: nn.Module) -> torch.optim.Optimizer:
    if trial.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=trial.lr, weight_decay=trial.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=trial.lr, momentum=trial.momentum, weight_decay=trial.weight_decay)


def _schedule(trial: Trial, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    # Stepped once per epoch with T_max = epochs (the authors' code stepped it per batch: a defect).
    if trial.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=trial.epochs)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def batch_schedule(trial: Trial, task: Task) -> BatchSchedule:
    """The trial's batches: its batch size, order seed, augmentation seed and (if its regime
    augments) the task's augmentation recipe."""
    return BatchSchedule(trial.batch_size, trial.shuffle_seed, trial.seed,
                         task.augment_recipe if trial.augment else None, task.pad_fill)


def memory_share(trial: Trial) -> float:
    """The fraction of a GPU's memory the trial may use: its ``resources.gpus`` if fractional, else 1."""
    gpus = trial.resources.gpus
    return gpus if 0 < gpus < 1 else 1.0


def train_trial(trial: Trial, store: Store, report: Report | None = None,
                device: str | torch.device = "cpu", parallel: DataParallel | None = None) -> TrainSummary:
    """Train ``trial``, saving a checkpoint at each epoch in ``trial.checkpoints`` and calling
    ``report(info)`` after each save with ``trial_id, epoch, step, checkpoint, train_loss_running,
    final``. Between checkpoints it saves a resume point every ``trial.resume_every`` epochs or
    minutes (``checkpoints.save_resume_point``; deleted once the last checkpoint is written). It writes only
    the checkpoints missing on ``store`` and resumes from the latest intact state before the first of them
    (``repair.start_point``: a gap left by a corrupt or deleted checkpoint is rebuilt, never skipped; a
    trial with every checkpoint on storage trains nothing).
    A trial whose weights turn non-finite stops training: its remaining checkpoints are written from
    those weights (non-finite weights stay non-finite, so they would measure the same) and record
    ``diverged_at``, the first epoch that ended with non-finite weights.

    With ``parallel`` (one of several data-parallel workers, see ``ddp.py``) every worker trains its
    shard of each batch and calls ``report``; rank 0 alone writes files.
    Cost: ``epochs * ceil(n_train / batch_size)`` optimiser steps (SAM doubles the passes); one host
    sync per epoch; a clock read per epoch. The checkpoint also records ``precision``, ``compiled``,
    ``channels_last``, ``data_on_device``, ``resumed_from`` (the epoch this run started from, None
    for a fresh start), ``world_size`` and ``train_loss_curve`` ([epoch, running loss] of every epoch up to
    100, then about CURVE_POINTS in all). Between checkpoints, ``report`` also gets the running loss
    (no ``checkpoint`` key) at most once a second."""
    t0 = time.perf_counter()
    device = torch.device(device)
    task = load_trial_task(trial)
    model = build_model(trial, task).to(device)
    if parallel is not None:
        model = parallel.prepare(model, device)
    base = _optimizer(trial, model)
    sam = SAM(model, base, rho=trial.sam_rho) if trial.sam_rho is not None else None
    sched = _schedule(trial, base)
    step = TrainStep(model, base, loss_fn_for(task), sam=sam, precision=trial.precision, compile=trial.compile,
                     parallel=parallel)
    data = TrainingData(task, device, memory_share=memory_share(trial))
    schedule = batch_schedule(trial, task)
    steps_per_epoch = schedule.steps(len(data))
    writes = parallel is None or parallel.writes
    start_epoch, prior_wall, resumed, diverged, curve = 0, 0.0, None, None, []

    start = start_point(store, trial.trial_id, trial.checkpoints, map_location=device, writes=writes)
    for line in start.set_aside:
        warnings.warn(f"rebuilding {line}", RuntimeWarning, stacklevel=2)
    state, missing = start.state, set(start.missing)
    if parallel is not None:
        parallel.barrier()  # every worker has read storage before rank 0 writes anything to it
    if state is not None:
        model.load_state_dict(state["model"])
        base.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch = resumed = state["epoch"]
        prior_wall = state["train_wall_s"]
        diverged = state.get("diverged_at")
        curve = [list(point) for point in state.get("train_loss_curve", [])]

    def contents(epoch: int, running_loss: float | None) -> dict[str, Any]:
        return {
            "trial": trial.to_dict(), "step": epoch * steps_per_epoch, "model": model.state_dict(),
            "optimizer": base.state_dict(), "scheduler": sched.state_dict(),
            "train_loss_running": running_loss, "train_wall_s": prior_wall + time.perf_counter() - t0,
            # How it was computed, for the result row: precision, compiled (false after a fallback),
            # channels_last, and whether the training split lived on the training device.
            "precision": step.precision, "compiled": step.compiled, "channels_last": step.channels_last,
            "data_on_device": data.resident, "world_size": parallel.world if parallel else 1,
            "resumed_from": resumed, "diverged_at": diverged, "train_loss_curve": list(curve),
        }

    def checkpoint(epoch: int, running_loss: float | None) -> None:
        path = checkpoint_path(store, trial.trial_id, epoch)
        if writes:
            save_checkpoint(store, trial.trial_id, epoch, contents(epoch, running_loss))
        if report is not None:
            report({"trial_id": trial.trial_id, "epoch": epoch, "step": epoch * steps_per_epoch,
                    "checkpoint": path, "train_loss_running": running_loss, "final": epoch == trial.epochs})

    due = _resume_clock(trial.resume_every)
    progress = _progress(report, trial.trial_id, steps_per_epoch)
    stride = max(1, trial.epochs // CURVE_POINTS)
    if 0 in missing and state is None:
        checkpoint(0, None)
    for epoch in range(start_epoch + 1, max(missing, default=0) + 1):  # up to the last missing checkpoint
        running_loss = train_epoch(step, data.batches(schedule, epoch))
        sched.step()
        if epoch <= CURVE_POINTS // 10 or epoch % stride == 0 or epoch in trial.checkpoints:
            curve.append([epoch, running_loss])
        progress(epoch, running_loss)
        if diverged is None and not math.isfinite(running_loss) and not _finite(model):
            diverged = epoch
        if epoch in trial.checkpoints:
            if epoch in missing:  # one still on storage is kept as it is (this run rebuilds an earlier one)
                checkpoint(epoch, running_loss)
            due(epoch, saved=True)
        elif due(epoch) and writes:
            save_resume_point(store, trial.trial_id, epoch, contents(epoch, running_loss))
        if diverged is not None:  # nothing left to learn: the remaining checkpoints hold these weights
            for later in (c for c in trial.checkpoints if c > epoch and c in missing):
                checkpoint(later, running_loss)
            break
    if writes:
        delete_resume_point(store, trial.trial_id)
    return TrainSummary(trial.trial_id, max(max(missing, default=0) - start_epoch, 0), resumed,
                        prior_wall + time.perf_counter() - t0)


CURVE_POINTS = 1000  # the learning curve keeps every epoch up to 100, then about this many in all
PROGRESS_S = 1.0  # at most one per-epoch progress report a second (family A trains 100,000 one-step epochs)


def _progress(report: Report | None, trial_id: str, steps_per_epoch: int) -> Callable[[int, float], None]:
    """``progress(epoch, loss)``: the running loss of each epoch to ``report`` (Ray Tune, whose loggers -
    TensorBoard, and MLflow or W&B when the study asks - then draw learning curves), at most one report
    per PROGRESS_S; checkpoint reports carry ``checkpoint`` and progress reports do not."""
    last = [-math.inf]

    def progress(epoch: int, loss: float) -> None:
        now = time.perf_counter()
        if report is not None and now - last[0] >= PROGRESS_S:
            last[0] = now
            report({"trial_id": trial_id, "epoch": epoch, "step": epoch * steps_per_epoch,
                    "train_loss_running": loss})

    return progress


def _finite(model: nn.Module) -> bool:
    """Whether every parameter is finite (one host sync; called only after a non-finite epoch loss)."""
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _resume_clock(every: ResumeEvery) -> Callable[..., bool]:
    """``due(epoch, saved=False)``: whether a resume point is due after ``epoch`` (every
    ``every.epochs`` epochs, or ``every.minutes`` since the last save), restarting the clock
    when it says yes or when told a checkpoint was just ``saved``. Reads the host clock only: no
    device sync, so it may run after every one of family A's 100,000 one-step epochs."""
    epochs, minutes = every.epochs, every.minutes
    last = [time.perf_counter()]

    def due(epoch: int, saved: bool = False) -> bool:
        now = time.perf_counter()
        yes = saved or bool(epochs and epoch % epochs == 0) or (minutes is not None and now - last[0] >= 60 * minutes)
        if yes:
            last[0] = now
        return yes and not saved

    return due
