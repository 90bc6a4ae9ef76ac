"""PAC-Bayes magnitude-aware flatness (Jiang et al. 2020, "Fantastic Generalization Measures and Where to Find
Them", ``pacbayes.mag.flatness``): ``1 / sigma'^2``, sigma' the largest relative noise scale such that the
expected increase of a bounded loss under noise ``N(0, sigma^2 w^2 + eps^2)`` on every weight stays within
``bound``. The estimator is :func:`raystudy.geometry.pac_bayes.pac_bayes_flatness`; this entry picks the
bounded loss: the 0-1 training error for classifiers (Jiang et al.), the MSE divided by the variance of the
measured targets for regression (scale-free: a target times c gives the same sigma')."""
from __future__ import annotations

import math
from typing import Any

import polars as pl
from pydantic import Field

from raystudy.metrics.registry import Column, Context, Metric, Settings, register_metric


class PacBayes(Settings):
    """The ``pac_bayes`` metric: the allowed expected increase of the bounded loss (``bound``: error rate, or
    relative MSE), the noise floor ``eps`` on every weight's standard deviation, and the Monte Carlo ``draws``
    shared by every sigma of the search."""
    # Ranges (as raystudy/study/bounds.py documents for the built-in metrics): an error rate or relative MSE beyond
    # 100 bounds nothing; eps is a noise std beside weights of order 1; draws as every other Monte Carlo count.
    bound: float = Field(0.1, gt=0, le=100)
    eps: float = Field(1e-3, ge=0, le=1)
    draws: int = Field(32, ge=1, le=100_000)


def zero_one_error(outputs, targets):
    """Mean 0-1 error of a batch of logits ``(n, C)`` against class labels ``(n,)``, in the logits' dtype."""
    return (outputs.argmax(1) != targets).to(outputs.dtype).mean()


class RelativeMSE:
    """Mean squared error of a batch divided by ``variance`` (of the measured targets): dimensionless."""

    def __init__(self, variance: float):
        self.variance = variance

    def __call__(self, outputs, targets):
        from torch.nn.functional import mse_loss
        return mse_loss(outputs, targets) / self.variance


def compute(ctx: Context) -> dict[str, Any]:
    """Cost: one base pass, then ``draws`` forward passes over the measured data per sigma the bracket and
    bisection evaluate (about 12-25): ~400-800 passes at the default 32 draws."""
    from raystudy.geometry.pac_bayes import pac_bayes_flatness
    cfg = ctx.settings
    if ctx.task.kind == "classification":
        loss = zero_one_error
    else:
        variance = float(ctx.y.double().var()) if len(ctx.y) > 1 else 0.0
        loss = RelativeMSE(variance if variance > 0 else 1.0)  # constant targets: plain MSE is all there is
    r = pac_bayes_flatness(ctx.model, loss, ctx.data, bound=cfg.bound, eps=cfg.eps, n_draws=cfg.draws, seed=ctx.seed)
    return {"pac_bayes_flatness": r.flatness if math.isfinite(r.flatness) else None, "pac_bayes_sigma": r.sigma,
            "pac_bayes_censored": r.censored}


register_metric(Metric(
    name="pac_bayes", settings=PacBayes, settings_key="pac_bayes", compute=compute,
    columns=(
        Column("pac_bayes_flatness", pl.Float64, "sharpness",
               "magnitude-aware PAC-Bayes flatness 1 / sigma'^2 (Jiang et al. 2020; large = sharp, dimensionless): "
               "sigma' the largest noise scale, relative to each weight, whose expected increase of the 0-1 "
               "training error (regression: MSE / target variance) stays within pac_bayes.bound; null when "
               "infinite", label="PAC-Bayes flatness (1/sigma'^2)", role="sharpness"),
        Column("pac_bayes_sigma", pl.Float64, "sharpness",
               "sigma' behind pac_bayes_flatness (dimensionless; 0 when the eps floor alone breaks the bound)"),
        Column("pac_bayes_censored", pl.Boolean, "sharpness",
               "true when the loss increase stayed within the bound up to sigma' = 64 (sigma' is then a lower "
               "bound, the flatness an upper bound)"),
    )))
