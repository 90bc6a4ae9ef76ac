"""Family A: regression onto seven 2-D test functions on [-3.5, 3.5]^2 (docs/PROTOCOL.md).

Every target maps a ``(N, 2)`` tensor of points ``(x, y)`` to a ``(N, 1)`` tensor of values and is
differentiable with autograd. Under one seed every target shares the same sample points, so only
the target differs between functions (the protocol's controlled comparison).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .base import Task

DOMAIN = (-3.5, 3.5)


def sphere(p: Tensor) -> Tensor:
    x, y = p[:, 0], p[:, 1]
    return (x**2 + y**2)[:, None]


def booth(p: Tensor) -> Tensor:
    x, y = p[:, 0], p[:, 1]
    return ((x + 2 * y - 7) ** 2 + (2 * x + y - 5) ** 2)[:, None]


def three_hump_camel(p: Tensor) -> Tensor:
    x, y = p[:, 0], p[:, 1]
    return (2 * x**2 - 1.05 * x**4 + x**6 / 6 + x * y + y**2)[:, None]


def himmelblau(p: Tensor) -> Tensor:
    x, y = p[:, 0], p[:, 1]
    return ((x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2)[:, None]


def rosenbrock(p: Tensor) -> Tensor:
    x, y = p[:, 0], p[:, 1]
    return ((1 - x) ** 2 + 100 * (y - x**2) ** 2)[:, None]


def beale(p: Tensor) -> Tensor:
    x, y = p[:, 0], p[:, 1]
    return (
        (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2
    )[:, None]


def rastrigin(p: Tensor) -> Tensor:
    x, y = p[:, 0], p[:, 1]
    two_pi = 2 * math.pi
    return (20 + x**2 - 10 * torch.cos(two_pi * x) + y**2 - 10 * torch.cos(two_pi * y))[:, None]


FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    f.__name__: f
    for f in (sphere, booth, three_hump_camel, himmelblau, rosenbrock, beale, rastrigin)
}


def get_function(name: str) -> Callable[[Tensor], Tensor]:
    """The target called ``name``; ``KeyError`` listing the known names otherwise."""
    if name not in FUNCTIONS:
        raise KeyError(f"unknown function {name!r}; known: {', '.join(FUNCTIONS)}")
    return FUNCTIONS[name]


def drop_rows_in(x: Tensor, reference: Tensor) -> Tensor:
    """Rows of ``x`` (shape ``(N, D)``) that do not occur exactly in ``reference`` (order kept).

    Cost: one hash-set build over ``reference`` and one lookup per row of ``x``.
    """
    seen = {tuple(r) for r in reference.tolist()}
    keep = torch.tensor([tuple(r) not in seen for r in x.tolist()], dtype=torch.bool)
    return x[keep]


def load(name: str, *, seed: int, n_train: int = 10_000, n_test: int = 10_000,
         target_scale: float = 1.0) -> Task:
    """Regression task for target ``name``: uniform points on [-3.5, 3.5]^2, float32.

    Points come from a private ``torch.Generator`` seeded with ``seed`` only (never the function
    name, never the scale), train points first, then test points; test rows equal to a train row are
    dropped, so ``len(x_test) <= n_test`` (``info["n_test_duplicates_dropped"]`` says how many).
    Targets are ``target_scale * f(x)`` (the amplitude control: 1 is the protocol's target), evaluated
    in float64 and stored as float32 ``(N, 1)``.
    """
    f = get_function(name)
    if n_train <= 0 or n_test <= 0:
        raise ValueError(f"n_train and n_test must be positive, got {n_train}, {n_test}")
    if not (math.isfinite(target_scale) and target_scale > 0):
        raise ValueError(f"target_scale must be finite and > 0, got {target_scale}")
    gen = torch.Generator().manual_seed(seed)
    lo, hi = DOMAIN
    x_train = torch.rand(n_train, 2, generator=gen) * (hi - lo) + lo
    x_test_all = torch.rand(n_test, 2, generator=gen) * (hi - lo) + lo
    x_test = drop_rows_in(x_test_all, x_train)
    return Task(
        name=name,
        family="functions",
        kind="regression",
        x_train=x_train,
        y_train=(target_scale * f(x_train.double())).float(),
        x_test=x_test,
        y_test=(target_scale * f(x_test.double())).float(),
        in_shape=(2,),
        out_dim=1,
        augment_recipe=None,
        info={
            "n_train": n_train,
            "n_test": len(x_test),
            "n_test_duplicates_dropped": n_test - len(x_test),
            "data_seed": seed,
            "domain_low": lo,
            "domain_high": hi,
            "target_scale": target_scale,
        },
    )


def _grid_values_and_gradients(name: str, n_grid: int) -> tuple[Tensor, Tensor]:
    """``(f, grad f)`` of target ``name`` at every node of a uniform ``n_grid x n_grid`` grid covering
    [-3.5, 3.5]^2 including its edges, in float64: shapes ``(n_grid**2,)`` and ``(n_grid**2, 2)``."""
    lo, hi = DOMAIN
    axis = torch.linspace(lo, hi, n_grid, dtype=torch.float64)
    gx, gy = torch.meshgrid(axis, axis, indexing="ij")
    pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1).requires_grad_(True)
    values = get_function(name)(pts)
    (grad,) = torch.autograd.grad(values.sum(), pts)
    return values.detach()[:, 0], grad


def target_complexity(name: str, n_grid: int = 201) -> float:
    """Our measured complexity of target ``name``: mean of ||grad f||^2 over the domain.

    The gradient is taken with autograd (float64) at every node of a uniform ``n_grid x n_grid``
    grid covering [-3.5, 3.5]^2 including its edges. Units: (target units / input unit)^2, so it
    grows with the target's amplitude squared (``c * f`` has ``c**2`` times the complexity).
    Cost: one forward and one backward over ``n_grid**2`` points.
    """
    _, grad = _grid_values_and_gradients(name, n_grid)
    return float((grad**2).sum(dim=1).mean())


def target_shape_complexity(name: str, n_grid: int = 201) -> float:
    """Scale-free complexity of target ``name``: mean ||grad f||^2 / Var(f) over the domain.

    Same grid and gradients as :func:`target_complexity`; Var(f) is the population variance of f over
    the grid nodes. Units: 1 / input unit^2 (an inverse squared length scale of the target's
    variation). Invariant to ``f -> c * f + b`` for any ``c != 0`` and ``b``, so it compares how
    wiggly targets are, not how large. Cost: one forward and one backward over ``n_grid**2`` points.
    """
    values, grad = _grid_values_and_gradients(name, n_grid)
    return float((grad**2).sum(dim=1).mean() / values.var(correction=0))
