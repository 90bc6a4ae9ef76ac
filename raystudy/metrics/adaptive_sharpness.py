"""Adaptive sharpness (Andriushchenko et al. 2023): worst- or average-case loss increase under perturbations
scaled by |w|, at every kind x norm x rho of the block's ``adaptive`` settings."""
from __future__ import annotations

import itertools
from typing import Any, Literal

import polars as pl
from pydantic import Field, model_validator

from raystudy.metrics.registry import Column, Context, Metric, Radii, SettingError, Settings, register_metric

ADAPTIVE = pl.Struct({"kind": pl.String, "norm": pl.String, "rho": pl.Float64, "adaptive": pl.Boolean, "m": pl.Int64,
                      "value": pl.Float64, "std": pl.Float64, "n_forward": pl.Int64, "n_backward": pl.Int64})


class Adaptive(Settings):
    """The ``adaptive_sharpness`` metric (Andriushchenko et al. 2023): every combination of ``rho`` x
    ``norm`` x ``kind`` is measured; ``adaptive`` scales perturbations by |w| (invariant to layer
    rescaling); ``m`` is the m-sharpness batch (worst case only; None = all measured data at once)."""
    rho: Radii = Field(default_factory=lambda: [0.0005])
    norm: list[Literal["l2", "linf"]] = Field(default_factory=lambda: ["l2"], min_length=1)
    kind: list[Literal["worst", "average"]] = Field(default_factory=lambda: ["worst", "average"], min_length=1)
    adaptive: bool = True
    m: int | None = Field(None, ge=1)
    n_iter: int = Field(20, ge=1)
    n_restarts: int = Field(1, ge=1)
    n_draws: int = Field(100, ge=1)

    @model_validator(mode="after")
    def _m_worst_only(self) -> "Adaptive":
        if self.m is not None and "average" in self.kind:
            raise SettingError("m", "m-sharpness is defined for the worst case only; "
                               "measure kind: [worst] with m, or drop m")
        return self


def adaptive_columns(cfg: Adaptive, model, loss_fn, data, seed: int) -> list[dict[str, Any]]:
    """Adaptive sharpness at every kind x norm x rho of ``cfg``, one struct each. Cost per worst-case entry:
    n_restarts x n_iter forward and backward passes over the data; per average-case entry: 1 + n_draws
    forward passes."""
    from raystudy.geometry import adaptive_sharpness
    out = []
    for kind, norm, rho in itertools.product(cfg.kind, cfg.norm, cfg.rho):
        r = adaptive_sharpness(model, loss_fn, data, rho, kind=kind, norm=norm, adaptive=cfg.adaptive,
                               m=cfg.m if kind == "worst" else None, n_iter=cfg.n_iter,
                               n_restarts=cfg.n_restarts, n_draws=cfg.n_draws, seed=seed)
        out.append({"kind": kind, "norm": norm, "rho": rho, "adaptive": cfg.adaptive, "m": r.m, "value": r.mean,
                    "std": r.std, "n_forward": r.n_forward, "n_backward": r.n_backward})
    return out


def compute(ctx: Context) -> dict[str, Any]:
    by = adaptive_columns(ctx.settings, ctx.model, ctx.loss_fn, ctx.data, ctx.seed)
    first = by[0]
    setting = (f"{first['kind']} {first['norm']} rho={first['rho']:g}" + (" adaptive" if first["adaptive"] else "")
               + (f" m={first['m']}" if first["m"] else ""))
    return {"adaptive_sharpness": first["value"], "adaptive_sharpness_by": by, "adaptive_sharpness_setting": setting}


register_metric(Metric(
    name="adaptive_sharpness", settings=Adaptive, settings_key="adaptive", compute=compute,
    columns=(
        Column("adaptive_sharpness", pl.Float64, "sharpness",
               "adaptive sharpness at adaptive_sharpness_setting (the first of adaptive_sharpness_by), loss units",
               label="adaptive sharpness", role="sharpness", verdict=True),
        Column("adaptive_sharpness_setting", pl.String, "sharpness", "the kind, norm and rho behind adaptive_sharpness"),
        Column("adaptive_sharpness_by", pl.List(ADAPTIVE), "sharpness",
               "adaptive worst-/average-case sharpness (Andriushchenko et al. 2023), L(w+delta) - L(w) in loss "
               "units, per kind x norm x rho: value, its spread over m-batches (worst) or draws (average), passes "
               "spent"),
    )))
