"""How complex the learned function is around the measured data: the mean input-gradient norm and, for ReLU
networks, the density of linear regions along random lines."""
from __future__ import annotations

from typing import Any

import polars as pl
from pydantic import Field

from raystudy.metrics.registry import Column, Context, Metric, Settings, register_metric

F = pl.Float64


class Complexity(Settings):
    """The ``complexity`` metric: the mean input-gradient norm of the learned function and, for ReLU
    networks, the density of linear regions along ``lines`` random lines through measured points, each
    sampled at ``points`` points over ``length`` input units (None: the RMS distance of the measured
    inputs from their mean, so the segment spans the data whatever its scale)."""
    lines: int = Field(50, ge=1)
    points: int = Field(513, ge=2)
    length: float | None = Field(None, gt=0)


def complexity_columns(cfg: Complexity, model, data, seed: int) -> dict[str, Any]:
    """The mean input-gradient norm (C backward passes per batch) and, for ReLU networks, the linear-region
    density along ``lines`` random lines of ``points`` samples (lines x points forward samples); the region
    columns are absent for networks without ReLU."""
    import torch
    from torch import nn

    from raystudy.safety import input_gradient_norm, linear_region_density
    grad = input_gradient_norm(model, data)
    out: dict[str, Any] = {"input_grad_norm": grad.mean, "input_grad_norm_se": grad.stderr}
    x = torch.cat([a for a, _ in data]).flatten(1).double()
    length = cfg.length or float((x - x.mean(0)).pow(2).sum(1).mean().sqrt()) or 1.0
    if not any(isinstance(m, nn.ReLU) for m in model.modules()):  # e.g. the ViT (GELU): no linear regions
        return out
    regions = linear_region_density(model, data, n_lines=cfg.lines, n_points=cfg.points, length=length, seed=seed)
    out.update(linear_region_density=regions.mean, linear_region_density_se=regions.stderr,
               linear_region_length=length)
    return out


def compute(ctx: Context) -> dict[str, Any]:
    return complexity_columns(ctx.settings, ctx.model, ctx.data, ctx.seed)


register_metric(Metric(
    name="complexity", settings=Complexity, settings_key="complexity", compute=compute,
    columns=(
        Column("input_grad_norm", F, "complexity",
               "mean over measured inputs of the Frobenius norm of the model's input Jacobian (outputs per input "
               "unit)", label="input-gradient norm"),
        Column("input_grad_norm_se", F, "complexity", "standard error of input_grad_norm over the inputs"),
        Column("linear_region_density", F, "complexity",
               "ReLU networks: activation-pattern changes per input unit along random lines through measured points",
               label="linear-region density"),
        Column("linear_region_density_se", F, "complexity", "standard error of linear_region_density over lines"),
        Column("linear_region_length", F, "complexity", "length of each line segment, in input units"),
    )))
