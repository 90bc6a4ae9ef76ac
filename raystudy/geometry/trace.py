"""Hessian trace by Hutchinson and Hutch++, each with an honest standard error.

Hutchinson averages zᵀHz over Rademacher probes z; its standard error is the sample std / sqrt(n).
Hutch++ (Meyer et al. 2021) first captures the dominant eigen-directions - the few outliers that hold
most of a network Hessian's Frobenius norm - exactly: Q = orth(H S) for s sketch probes S, and
tr(QᵀHQ) costs s more products. Only the rest, (I-QQᵀ)H(I-QQᵀ), is estimated by Hutchinson. Given Q
that residual estimate is unbiased and tr(QᵀHQ) + its expectation is exactly tr(H) for every Q, so the
total variance is the expected residual variance: the residual samples' std / sqrt(n) is an honest
standard error of the whole Hutch++ estimate (no repetitions needed).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import Tensor, nn

from raystudy.geometry.data import Batch, LossFn
from raystudy.geometry.hvp import HessianOperator, as_operator
from raystudy.geometry.lanczos import BASIS_MEMORY_BYTES, orthogonalise

METHODS = ("hutch++", "hutchinson")
MIN_PROBES = 10  # fewest Hutchinson samples before a standard error is trusted for stopping
SKETCH_ROUND = 8  # adaptive Hutch++: pilot probes, and directions added per sketch round


@dataclass(frozen=True)
class TraceResult:
    """estimate of tr(H) and its standard error (same units as the loss / parameter²).

    n_probes: Hutchinson samples (for hutch++ those of the residual); sketch_rank: columns of Q (0
    for hutchinson); n_hvp: Hessian-vector products spent; wall_s: seconds.
    """

    estimate: float
    stderr: float
    n_hvp: int
    wall_s: float
    method: str
    n_probes: int
    sketch_rank: int
    backend: str


def rademacher(n: int, dim: int, gen: torch.Generator, op: HessianOperator) -> Tensor:
    """(n, dim) random signs on the operator's device and dtype, drawn from ``gen`` on the CPU."""
    z = torch.randint(0, 2, (n, dim), generator=gen, dtype=torch.int8)
    return (z.to(op.dtype) * 2 - 1).to(op.device)


Goal = Callable[[float], float]  # estimate -> the standard error to reach


def _need(samples: Tensor, goal: Goal, offset: float) -> float:
    """Probes still needed for ``goal`` (at least MIN_PROBES in all), judged from the 80% upper
    confidence bound of the sample variance (chi-square): stopping on the plain estimate would end
    runs whose first probes happened to agree, and under-report their standard error."""
    from scipy.stats import chi2  # lazy: scipy.stats takes ~0.5 s to import

    n = len(samples)
    scale = max(goal(offset + float(samples.mean())), 1e-300)
    var_up = float(samples.var()) * (n - 1) / float(chi2.ppf(0.2, n - 1))
    return max(MIN_PROBES, min(var_up / scale**2, 1e12)) - n


def _hutchinson(op: HessianOperator, budget: int, gen: torch.Generator, Q: Tensor | None,
                goal: Goal | None, offset: float, samples: Tensor | None = None) -> Tensor:
    """Samples zᵀPHPz (P = I - QᵀQ, or I), appended to ``samples``, until ``budget`` new probes are
    spent or the standard error of offset + mean reaches ``goal``. Blocks are sized by the probes
    the variance so far says are still needed, so the goal is not overshot by a whole block."""
    samples = torch.zeros(0, dtype=torch.float64) if samples is None else samples
    stop = len(samples) + budget
    while len(samples) < stop:
        n, block = len(samples), op.max_block
        if goal is not None and n < 2:
            block = min(block, MIN_PROBES - n)
        elif goal is not None:
            if n >= MIN_PROBES and _need(samples, goal, offset) <= 0:
                break
            block = int(min(block, math.ceil(_need(samples, goal, offset))))
        Z = rademacher(min(block, stop - n), op.dim, gen, op)
        if Q is not None:
            Z -= (Z @ Q.T) @ Q
        HZ = op.apply(Z)
        if not torch.isfinite(HZ).all():
            raise ValueError("a Hessian-vector product is not finite (NaN/inf in the Hessian)")
        samples = torch.cat([samples, (Z * HZ).sum(1).double().cpu()])
    return samples


def _extend(op: HessianOperator, Q: Tensor | None, Y: Tensor) -> tuple[Tensor, float, float]:
    """Q extended by orthonormal rows spanning the sketch Y = H S, tr(Q_newᵀ H Q_new) of the new
    rows, and the smallest |Ritz value| among them (what the next round could still capture).
    Costs len(Y) Hv (H Q_new, reduced block by block, never stored)."""
    if Q is not None:
        orthogonalise(Y, Q)
    new = torch.linalg.qr(Y.T).Q.T
    if Q is not None:
        orthogonalise(new, Q)
    G = torch.cat([new @ op.apply(blk).T for blk in new.split(op.max_block)], dim=1).double().cpu()
    theta = torch.linalg.eigvalsh((G + G.T) / 2)
    return (new if Q is None else torch.cat([Q, new])), float(G.trace()), float(theta.abs().min())


def trace_estimate(op: HessianOperator, n_hvp: int = 100, method: str = "hutch++",
                   target_stderr: float | None = None, seed: int = 0, sketch: int | None = None,
                   target_abs: float | None = None, memory_bytes: int = BASIS_MEMORY_BYTES
                   ) -> TraceResult:
    """tr(H) of ``op`` with its standard error (see ``TraceResult``).

    n_hvp: the budget of Hessian-vector products; all of it is spent unless a target is met first.
    Targets: stop once stderr <= max(target_stderr x |estimate|, target_abs), judged from the 10th
    probe on with the 80% upper confidence bound of the variance (the reported stderr is the plain
    estimate); an absolute target keeps a trace near zero, as at initialisation, from using it all.
    hutch++ sketch rank: ``sketch`` if given; else with no target the classic split (n_hvp // 3,
    costing 2 x that); with a target it adapts. SKETCH_ROUND plain probes first estimate how many
    plain probes the target needs; only if that exceeds 4 x SKETCH_ROUND does a sketch start (their
    products H S are its first round). A direction of eigenvalue θ adds ~2θ² to a probe's variance
    and costs 2 Hv to capture, so rounds of SKETCH_ROUND directions continue while the smallest
    |Ritz value| of the last round exceeds the target standard error (or, when 2 x dim products
    are fewer than the plain probes needed, until Q spans everything and the trace is exact).
    Rank is capped by ``memory_bytes`` (Q is stored) and by dim.
    """
    start, n0 = time.perf_counter(), op.n_hvp
    if method not in METHODS:
        raise ValueError(f"method={method!r}: expected one of {METHODS}")
    if n_hvp < 2:
        raise ValueError(f"n_hvp={n_hvp}: a standard error needs at least 2 products")
    if any(t is not None and t <= 0 for t in (target_stderr, target_abs)):
        raise ValueError(f"target_stderr={target_stderr}, target_abs={target_abs} must be positive")
    goal = None if target_stderr is None and target_abs is None else (
        lambda est: max((target_stderr or 0.0) * abs(est), target_abs or 0.0))
    gen = torch.Generator().manual_seed(seed)
    spent = lambda: op.n_hvp - n0
    Q, low_rank, samples = None, 0.0, None
    cap = min(max(memory_bytes // (op.dim * op.dtype.itemsize), 1), op.dim, (n_hvp - 2) // 2)
    if method == "hutch++" and (sketch is not None or goal is None):
        s = min(sketch if sketch is not None else n_hvp // 3, cap)
        if s > 0:
            Q, low_rank, _ = _extend(op, None, op.apply(rademacher(s, op.dim, gen, op)))
    elif method == "hutch++":
        c = SKETCH_ROUND
        S = rademacher(min(c, n_hvp), op.dim, gen, op)
        Y = op.apply(S)
        samples = (S * Y).sum(1).double().cpu()  # plain Hutchinson samples, and the first sketch
        scale, need = goal(float(samples.mean())), _need(samples, goal, 0.0)
        if need > 4 * c and c <= cap:
            whole = 2 * op.dim <= need  # capturing all of H is cheaper than the probes: exact
            theta_min, samples = math.inf, None
            while (whole or theta_min > scale) and (room := cap - (0 if Q is None else len(Q))) \
                    and spent() + 2 * min(c, room) <= n_hvp:
                if Q is not None:
                    Y = op.apply(rademacher(min(c, room), op.dim, gen, op))
                Q, extra, theta_min = _extend(op, Q, Y)
                low_rank += extra
    if Q is not None and len(Q) == op.dim:  # Q spans everything: the trace is exact
        samples = torch.zeros(0, dtype=torch.float64)
    else:
        samples = _hutchinson(op, n_hvp - spent(), gen, Q, goal, low_rank, samples)
    n = len(samples)
    est = low_rank + (float(samples.mean()) if n else 0.0)
    se = float(samples.std()) / math.sqrt(n) if n > 1 else (0.0 if n == 0 else math.nan)
    return TraceResult(est, se, spent(), time.perf_counter() - start, method, n,
                       0 if Q is None else len(Q), op.backend)


def hessian_trace(model: nn.Module | HessianOperator, loss_fn: LossFn | None = None,
                  data: Iterable[Batch] | None = None, n_hvp: int = 100, method: str = "hutch++",
                  target_stderr: float | None = None, seed: int = 0, sketch: int | None = None,
                  target_abs: float | None = None, **op_kwargs) -> TraceResult:
    """Trace of the loss Hessian of ``model`` on ``data`` with its standard error.

    ``model`` may be a prebuilt ``HessianOperator`` (omit loss_fn and data); op_kwargs go to
    ``HessianOperator``. Cost: at most ``n_hvp`` Hessian-vector products (see ``trace_estimate``).
    """
    start = time.perf_counter()
    op = as_operator(model, loss_fn, data, **op_kwargs)
    r = trace_estimate(op, n_hvp=n_hvp, method=method, target_stderr=target_stderr, seed=seed,
                       sketch=sketch, target_abs=target_abs)
    return TraceResult(r.estimate, r.stderr, r.n_hvp, time.perf_counter() - start, r.method,
                       r.n_probes, r.sketch_rank, r.backend)
