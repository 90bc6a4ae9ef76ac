"""Hessian spectral density by stochastic Lanczos quadrature (SLQ), with λ_max and trace for free.

A Lanczos run of m steps from a random unit vector v yields Ritz values θ_j and weights τ_j (squared
first components of T's eigenvectors): the m-point Gauss quadrature of the spectral measure seen by v,
whose average over runs estimates the density (1/n) Σ δ(t - λ_i). Its first moment Σ τ_j θ_j = vᵀHv is
Hutchinson's trace sample (/n), so the same runs give tr(H) with a standard error, and the largest Ritz
value is a λ_max estimate. The runs advance together: each Lanczos step is one block product.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor, nn

from raystudy.geometry.data import Batch, LossFn
from raystudy.geometry.hvp import as_operator
from raystudy.geometry.lanczos import BASIS_MEMORY_BYTES
from raystudy.geometry.operator import LinearOperator, Products
from raystudy.geometry.trace import rademacher


@dataclass(frozen=True)
class DensityResult:
    """SLQ output. nodes[r], weights[r]: Ritz values (ascending) and quadrature weights (sum 1) of
    run r. grid, density: (G,) a sum of Gaussians of width ``sigma`` (eigenvalue units) at the nodes,
    averaged over runs; it integrates to 1 over the default grid. moments: estimates of tr(H)/n and
    tr(H²)/n with moments_stderr. lambda_max/min: extreme Ritz values over all runs with the
    residual norm bounding their error. trace = n x first moment, with trace_stderr.
    reorthogonalised: whether full reorthogonalisation fitted the memory budget.
    """

    nodes: list[Tensor]
    weights: list[Tensor]
    grid: Tensor
    density: Tensor
    sigma: float
    moments: tuple[float, float]
    moments_stderr: tuple[float, float]
    lambda_max: float
    lambda_max_residual: float
    lambda_min: float
    lambda_min_residual: float
    trace: float
    trace_stderr: float
    n_hvp: int
    wall_s: float
    reorthogonalised: bool
    backend: str


def _lanczos_runs(op: Products, V0: Tensor, n_steps: int, reorth: bool
                  ) -> list[tuple[Tensor, Tensor, float]]:
    """Lanczos from each row of V0 (unit rows), all runs in one block per step. Returns per run the
    diagonal alpha (m,), off-diagonal beta (m-1,) of T and the last beta (the residual coupling)."""
    r, dim = V0.shape
    basis = torch.empty(r, n_steps, dim, dtype=op.dtype, device=op.device) if reorth else None
    alpha = torch.zeros(r, n_steps, dtype=torch.float64)
    beta = torch.zeros(r, n_steps, dtype=torch.float64)
    length = torch.full((r,), n_steps)
    v, v_prev = V0.clone(), torch.zeros_like(V0)
    active = list(range(r))
    for i in range(n_steps):
        if reorth:
            basis[active, i] = v[active]
        w = op.apply(v[active])
        if not torch.isfinite(w).all():
            raise ValueError("a Hessian-vector product is not finite (NaN/inf in the Hessian)")
        a = (w * v[active]).sum(1)
        w -= a[:, None] * v[active]
        if i:
            w -= beta[active, i - 1, None].to(w) * v_prev[active]
        if reorth:  # twice is enough (CGS2); without it ghost copies of outliers appear
            for row, run in enumerate(active):
                for _ in range(2):
                    B = basis[run, :i + 1]
                    w[row] -= (B @ w[row]) @ B
        b = w.norm(dim=1)
        alpha[active, i], beta[active, i] = a.double().cpu(), b.double().cpu()
        scale = float(alpha[:, : i + 1].abs().max())
        still = []
        for row, run in enumerate(active):
            # an invariant subspace. Rounding can leave beta ~1e4 eps there; missing it only adds
            # nodes of weight ~beta², while stopping a run early would blur the bulk of a spectrum
            if float(b[row]) <= 100 * torch.finfo(op.dtype).eps * scale:
                length[run] = i + 1
            else:
                still.append(run)
                v_prev[run] = v[run]
                v[run] = w[row] / b[row]
        active = still
        if not active:
            break
    return [(alpha[k, :length[k]], beta[k, :length[k] - 1], float(beta[k, length[k] - 1]))
            for k in range(r)]


def slq_density(op: LinearOperator, n_runs: int = 10, n_steps: int = 80, seed: int = 0,
                grid: Tensor | None = None, sigma: float | None = None, n_grid: int = 1001,
                memory_bytes: int = BASIS_MEMORY_BYTES) -> DensityResult:
    """Spectral density of a symmetric operator by SLQ (see ``DensityResult``).

    Rademacher start vectors; ``n_steps`` is capped at dim. Runs are fully reorthogonalised when
    their bases fit ``memory_bytes`` (in groups if need be), else they use the plain three-term
    recurrence (Papyan's choice; quadrature stays accurate, the Ritz values may repeat). Default
    sigma: 1% of the spread of the nodes; default grid: n_grid points over nodes ± 6 sigma.
    Cost: n_runs x n_steps products (fewer when a run spans an invariant subspace); memory:
    n_steps vectors of length n per run held at once (reorthogonalised), or 3 per run (plain).

    Args:
        op: a symmetric ``LinearOperator`` (n x n): a ``HessianOperator``, a ``DenseOperator``, a
            square torch matrix (a numpy one is wrapped).
        n_runs: start vectors (independent quadratures).
        n_steps: Lanczos steps per run (capped at n).
        seed: seeds the CPU generator of the start vectors (the global RNG is untouched).
        grid: (G,) eigenvalue points to evaluate the density at (default above).
        sigma: Gaussian width in eigenvalue units (default above).
        n_grid: points of the default grid.
        memory_bytes: cap on the stored Lanczos bases.

    Returns:
        :class:`DensityResult`: per-run nodes and weights, grid and density (G,) (per eigenvalue
        unit, integrating to 1), moments of the spectrum, extreme Ritz values, trace, n_hvp.

    Raises:
        ValueError: n_runs or n_steps < 1, or a non-finite product.
    """
    start, op = time.perf_counter(), Products(op)
    if n_runs < 1 or n_steps < 1:
        raise ValueError(f"n_runs={n_runs} and n_steps={n_steps} must be at least 1")
    n_steps = min(n_steps, op.dim)
    gen = torch.Generator().manual_seed(seed)
    fit = memory_bytes // (n_steps * op.dim * op.dtype.itemsize)
    reorth, group = fit >= 1, max(min(fit, n_runs), 1) if fit >= 1 else op.max_block
    runs = []
    for g in range(0, n_runs, group):
        V0 = rademacher(min(group, n_runs - g), op.dim, gen, op) / math.sqrt(op.dim)
        runs += _lanczos_runs(op, V0, n_steps, reorth)
    nodes, weights, top, bottom = [], [], [], []
    for a, b, last in runs:
        theta, S = torch.linalg.eigh(torch.diag(a) + torch.diag(b, 1) + torch.diag(b, -1))
        nodes.append(theta)
        weights.append(S[0] ** 2)
        res = last * S[-1].abs()  # ||H y - θ y|| of every Ritz pair
        top.append((float(theta[-1]), float(res[-1])))
        bottom.append((float(theta[0]), float(res[0])))
    m1 = torch.stack([(w * t).sum() for t, w in zip(nodes, weights)])
    m2 = torch.stack([(w * t**2).sum() for t, w in zip(nodes, weights)])
    se = lambda x: float(x.std()) / math.sqrt(len(x)) if len(x) > 1 else math.nan
    lo, hi = min(b[0] for b in bottom), max(t[0] for t in top)
    sigma = sigma if sigma is not None else max(0.01 * (hi - lo), 1e-12 * max(abs(hi), 1.0))
    if grid is None:
        grid = torch.linspace(lo - 6 * sigma, hi + 6 * sigma, n_grid, dtype=torch.float64)
    grid = grid.to(torch.float64)
    all_nodes, all_weights = torch.cat(nodes), torch.cat(weights) / n_runs
    density = torch.zeros_like(grid)
    for t, w in zip(all_nodes.split(256), all_weights.split(256)):  # bounded (G x 256) temporaries
        density += (w * torch.exp(-0.5 * ((grid[:, None] - t) / sigma) ** 2)).sum(1)
    density /= sigma * math.sqrt(2 * math.pi)
    top_run, bottom_run = max(top), min(bottom)
    return DensityResult(nodes, weights, grid, density, sigma, (float(m1.mean()), float(m2.mean())),
                         (se(m1), se(m2)), top_run[0], top_run[1], bottom_run[0], bottom_run[1],
                         op.dim * float(m1.mean()), op.dim * se(m1), op.n_hvp,
                         time.perf_counter() - start, reorth, op.backend)


def hessian_density(model: nn.Module | LinearOperator, loss_fn: LossFn | None = None,
                    data: Iterable[Batch] | None = None, n_runs: int = 10, n_steps: int = 80,
                    seed: int = 0, grid: Tensor | None = None, sigma: float | None = None,
                    **op_kwargs) -> DensityResult:
    """Spectral density, λ_max and trace of the loss Hessian of ``model`` on ``data`` by SLQ.

    Args:
        model: the network, or a prebuilt ``LinearOperator`` (omit loss_fn, data, op_kwargs).
        loss_fn, data: see ``HessianOperator``.
        n_runs, n_steps, seed, grid, sigma: see ``slq_density``.
        **op_kwargs: ``HessianOperator`` options.

    Returns:
        :class:`DensityResult` (eigenvalues in loss / parameter² units), wall_s including the
        operator's construction.

    Cost: n_runs x n_steps Hessian-vector products (+ one forward pass to build the operator).
    """
    start = time.perf_counter()
    op = as_operator(model, loss_fn, data, **op_kwargs)
    r = slq_density(op, n_runs=n_runs, n_steps=n_steps, seed=seed, grid=grid, sigma=sigma)
    return DensityResult(**{**r.__dict__, "wall_s": time.perf_counter() - start})
