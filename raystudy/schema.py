"""The result row: one definition of every column, which the writer, the analysis, the report and the
README all follow. One row per (trial, checkpoint); a metric that was not measured is null, never 0.

Each column has a polars type, a group (what kind of thing it is) and a one-line meaning with its unit. The
metrics' columns are declared by their registry entries (``raystudy.metrics``); this module places them.
The metric groups are also the statistical families of the report's paired tests (docs/PROTOCOL.md:
Benjamini-Yekutieli within the safety group and within the sharpness group; the Hessian metrics form
their own group).
"""
from __future__ import annotations

import polars as pl

from raystudy.metrics import Column, get_metric, metric_columns, role_columns

F, I, S, B = pl.Float64, pl.Int64, pl.String, pl.Boolean
CURVE_POINT = pl.Struct({"epoch": I, "loss": F})

GROUPS = ("identity", "hyperparameter", "performance", "safety", "sharpness", "hessian", "complexity",
          "provenance")

# Where each metric's columns go: the metrics of 2026-12 at their old places (a row's column order is unchanged),
# every later one after them.
_PLACED = ("ece", "corruption", "consistency", "fisher_rao", "relative_flatness", "sam_sharpness", "adaptive_sharpness",
           "hessian", "complexity")


def _of(*names: str) -> tuple[Column, ...]:
    return tuple(c for n in names for c in get_metric(n).columns)


def _rest() -> tuple[Column, ...]:
    placed = {c.name for c in _of(*_PLACED)}
    return tuple(c for c in metric_columns() if c.name not in placed)


COLUMNS: tuple[Column, ...] = (
    # identity: which trial and checkpoint the row is
    Column("study", S, "identity", "study name"),
    Column("block", S, "identity", "block of the study file the trial comes from"),
    Column("family", S, "identity", "functions (A) | circles (B) | images (C)"),
    Column("task", S, "identity", "target function or dataset"),
    Column("model", S, "identity", "registry name of the architecture"),
    Column("regime", S, "identity", "base or '+'-joined regularisers: aug, wd, sam"),
    Column("seed", I, "identity", "trial seed (initial weights depend on task, model and seed only)"),
    Column("trial_id", S, "identity", "stable readable id; its hash covers every training setting"),
    Column("step", I, "identity", "optimiser steps taken at this checkpoint"),
    Column("epoch", I, "identity", "epochs taken at this checkpoint (0 = initial weights)"),
    Column("final", B, "identity", "true at the trial's last epoch"),
    Column("status", S, "identity", "ok | nonfinite (diverged: NaN/inf weights or loss)"),
    # hyperparameters: each its own column, effective values (weight_decay 0 unless the regime has wd)
    Column("lr", F, "hyperparameter", "learning rate"),
    Column("batch_size", I, "hyperparameter", "training batch size; null = full batch"),
    Column("weight_decay", F, "hyperparameter", "effective weight decay (0 unless the regime has wd)"),
    Column("sam_rho", F, "hyperparameter", "SAM radius; null unless the regime has sam"),
    Column("augment", B, "hyperparameter", "training batches augmented (regime has aug)"),
    Column("factor", F, "hyperparameter", "circles: inner/outer radius ratio"),
    Column("label_noise", F, "hyperparameter", "probability each training label was replaced at random"),
    Column("target_scale", F, "hyperparameter",
           "functions: amplitude of the target, which is target_scale * f (dimensionless; 1 = the protocol's)"),
    Column("momentum", F, "hyperparameter", "SGD momentum"),
    Column("optimizer", S, "hyperparameter", "sgd | adam"),
    Column("schedule", S, "hyperparameter", "constant | cosine (stepped per epoch)"),
    Column("epochs", I, "hyperparameter", "epochs the trial trains for"),
    # performance
    Column("train_loss", F, "performance", "mean loss on the un-augmented training set (eval mode)"),
    Column("train_acc", F, "performance", "training accuracy, fraction in [0, 1] (eval mode)"),
    Column("train_acc_train_mode", F, "performance",
           "BatchNorm models: training accuracy with batch statistics (train mode), to expose stale running "
           "statistics; null for models without BatchNorm"),
    Column("test_loss", F, "performance", "mean loss on the test set"),
    Column("test_acc", F, "performance", "test accuracy, fraction in [0, 1]"),
    Column("gen_gap", F, "performance",
           "classification: train - test accuracy in percentage points; regression: test - train MSE"),
    # the metrics' own columns (raystudy.metrics), where they have always been in a row; complexity's below
    *_of("ece", "corruption", "consistency", "fisher_rao", "relative_flatness", "sam_sharpness", "adaptive_sharpness",
         "hessian"),
    # complexity of the learned function / the target
    Column("target_complexity", F, "complexity",
           "functions: mean ||grad||^2 of the target as trained (target_scale * f) over the domain, "
           "(target units / input unit)^2; grows with target_scale^2"),
    Column("target_shape_complexity", F, "complexity",
           "functions: mean ||grad f||^2 / Var(f) of the target over the domain, 1 / input unit^2; the same for "
           "every target_scale (invariant to f -> c f + b)"),
    *_of("complexity"),
    Column("target_variance", F, "complexity",
           "functions: variance of the training targets; train_loss / target_variance is the relative fit error"),
    *_rest(),  # metrics registered since: after the others, before provenance
    # provenance: how the row was obtained
    Column("train_loss_running", F, "provenance",
           "mean training loss over the last epoch's batches (train mode); null if it was not finite"),
    Column("train_loss_curve", pl.List(CURVE_POINT), "provenance",
           "the learning curve up to this checkpoint: running training loss of every epoch up to 100, then ~1,000 "
           "evenly spaced epochs"),
    Column("resumed_from", I, "provenance", "epoch the run that wrote this checkpoint resumed from (null: a fresh start)"),
    Column("world_size", I, "provenance", "data-parallel workers that trained the trial (1: one process)"),
    Column("diverged_at", I, "provenance", "first epoch that ended with non-finite weights (null: never)"),
    Column("train_wall_s", F, "provenance", "seconds of training up to this checkpoint"),
    Column("precision", S, "provenance", "fp32 | bf16: the precision the trial trained in (autocast)"),
    Column("compiled", B, "provenance", "whether training ran through torch.compile (false after a fallback)"),
    Column("measured_on", S, "provenance", "train | test: the split the geometry metrics saw"),
    Column("measure_n", I, "provenance", "samples the geometry metrics saw"),
    Column("bn_mode", S, "provenance",
           "stored | recalibrate: BatchNorm running statistics as trained, or recomputed on the un-augmented "
           "training split before measuring (eval mode either way)"),
    Column("augmented", B, "provenance", "whether measured data were augmented (always false)"),
    Column("estimator_seed", I, "provenance", "seed of every stochastic estimator (shared by regimes of a seed)"),
    Column("measure_hash", S, "provenance",
           "hash of the measurement settings the row was measured under (changed settings re-measure)"),
    Column("raystudy_version", S, "provenance", "raystudy version that measured the row"),
    Column("torch_version", S, "provenance", "torch version"),
    Column("ray_version", S, "provenance", "ray version (null when measured without Ray)"),
    Column("device", S, "provenance", "device that measured the row"),
    Column("wall_s", F, "provenance", "seconds spent measuring this checkpoint"),
    Column("cpu_s", F, "provenance",
           "CPU seconds the measuring process spent on this checkpoint, all its threads (wall_s also counts "
           "time spent waiting for a CPU, e.g. behind training at a higher priority)"),
)

SCHEMA: dict[str, pl.DataType] = {c.name: c.dtype for c in COLUMNS}


def columns(group: str) -> tuple[str, ...]:
    """Names of the columns of one group, in schema order."""
    if group not in GROUPS:
        raise KeyError(f"unknown column group {group!r}; known: {', '.join(GROUPS)}")
    return tuple(c.name for c in COLUMNS if c.group == group)


# The metrics the paired tests compare (docs/PROTOCOL.md, "Statistics as reported"), by statistical family.
PERFORMANCE = ("gen_gap", "test_acc")
SAFETY = ("ece", "corruption_acc", "disagreement")
SHARPNESS = role_columns("sharpness")  # scalar curvature metrics, larger = sharper, in registration order
HESSIAN = role_columns("hessian")
