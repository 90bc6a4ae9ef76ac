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
from typing import Iterable

import torch
from torch import Tensor, nn

from raystudy.geometry.data import Batch, LossFn
from raystudy.geometry.hvp import HessianOperator, as_operator
from raystudy.geometry.lanczos import BASIS_MEMORY_BYTES, orthogonalise

METHODS = ("hutch++", "hutchinson")
MIN_PROBES = 10  # fewest Hutchinson samples before a standard error is trusted for stopping
SKETCH_ROUND = 8  # adaptive Hutch++ grows its sketch by this many directions at a time


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


def _hutchinson(op: HessianOperator, budget: int, gen: torch.Generator, Q: Tensor | None,
                target: float | None, offset: float, samples: Tensor | None = None) -> Tensor:
    """Samples zᵀPHPz (P = I - QᵀQ, or I), appended to ``samples``, until ``budget`` new probes are
    spent or the standard error of offset + mean is at most ``target`` x |offset + mean|. Blocks are
    sized by the probes the current variance says are still needed, so the target is not overshot."""
    samples = torch.zeros(0, dtype=torch.float64) if samples is None else samples
    stop = len(samples) + budget
    while len(samples) < stop:
        n, block = len(samples), op.max_block
        if target is not None and n >= 2:
            scale = target * abs(offset + float(samples.mean()))
            if n >= MIN_PROBES and float(samples.std()) / math.sqrt(n) <= scale:
                break
            need = float(samples.var()) / max(scale, 1e-300) ** 2 - n
            block = int(min(block, max(math.ceil(min(need, 1e9)), MIN_PROBES - n, 1)))
        Z = rademacher(min(block, stop - n), op.dim, gen, op)
        if Q is not None:
            Z -= (Z @ Q.T) @ Q
        HZ = op.apply(Z)
        if not torch.isfinite(HZ).all():
            raise ValueError("a Hessian-vector product is not finite (NaN/inf in the Hessian)")
        samples = torch.cat([samples, (Z * HZ).sum(1).double().cpu()])
    return samples


def _grow_sketch(op: HessianOperator, gen: torch.Generator, Q: Tensor | None, s: int
                 ) -> tuple[Tensor, float]:
    """Q extended by s orthonormal rows spanning H S (S: s Rademacher probes), and tr(Q_newᵀ H Q_new)
    of the new rows. Costs 2 s Hv; H Q is reduced block by block, never stored."""
    Y = op.apply(rademacher(s, op.dim, gen, op))
    if Q is not None:
        orthogonalise(Y, Q)
    new = torch.linalg.qr(Y.T).Q.T
    if Q is not None:
        orthogonalise(new, Q)
    low_rank = sum(float((blk * op.apply(blk)).sum()) for blk in new.split(op.max_block))
    return (new if Q is None else torch.cat([Q, new])), low_rank


def trace_estimate(op: HessianOperator, n_hvp: int = 100, method: str = "hutch++",
                   target_stderr: float | None = None, seed: int = 0, sketch: int | None = None,
                   memory_bytes: int = BASIS_MEMORY_BYTES) -> TraceResult:
    """tr(H) of ``op`` with its standard error (see ``TraceResult``).

    n_hvp: the budget of Hessian-vector products; all of it is spent unless ``target_stderr`` is
    met first. target_stderr: stop once stderr <= target_stderr x |estimate| (relative), checked
    from the 10th probe on.
    hutch++ sketch rank: ``sketch`` if given; else with no target the classic split (n_hvp // 3,
    costing 2 x that); with a target it grows in rounds of SKETCH_ROUND directions: after each
    round the variance of SKETCH_ROUND residual probes predicts the probes still needed, and the
    sketch grows while the last round saved more products than a round costs (3 x SKETCH_ROUND,
    the probes of superseded rounds included). Always capped by ``memory_bytes`` (Q is stored) and by dim.
    """
    start, n0 = time.perf_counter(), op.n_hvp
    if method not in METHODS:
        raise ValueError(f"method={method!r}: expected one of {METHODS}")
    if n_hvp < 2:
        raise ValueError(f"n_hvp={n_hvp}: a standard error needs at least 2 products")
    if target_stderr is not None and target_stderr <= 0:
        raise ValueError(f"target_stderr={target_stderr} must be positive")
    gen = torch.Generator().manual_seed(seed)
    spent = lambda: op.n_hvp - n0
    Q, low_rank, samples = None, 0.0, None
    if method == "hutch++":
        cap = min(max(memory_bytes // (op.dim * op.dtype.itemsize), 1), op.dim)
        c = SKETCH_ROUND if sketch is None and target_stderr is not None else None
        s = min(sketch if sketch is not None else c or n_hvp // 3, cap, (n_hvp - 2) // 2)
        if s > 0:
            Q, low_rank = _grow_sketch(op, gen, None, s)
        prev_need = None
        while c is not None and len(Q) < op.dim:
            # pilot probes under the current Q: kept if this Q is final, else superseded
            samples = _hutchinson(op, min(c, n_hvp - spent()), gen, Q, None, low_rank)
            scale = target_stderr * abs(low_rank + float(samples.mean()))
            need = max(MIN_PROBES, float(samples.var()) / max(scale, 1e-300) ** 2) - c
            pays = need > 3 * c and (prev_need is None or prev_need - need > 3 * c)
            if not pays or len(Q) + c > cap or spent() + 3 * c > n_hvp:
                break
            prev_need = need
            extra, ds = _grow_sketch(op, gen, Q, c)
            Q, low_rank, samples = extra, low_rank + ds, None
    if Q is not None and len(Q) == op.dim:  # Q spans everything: the trace is exact
        samples = torch.zeros(0, dtype=torch.float64)
    else:
        samples = _hutchinson(op, n_hvp - spent(), gen, Q, target_stderr, low_rank, samples)
    n = len(samples)
    est = low_rank + (float(samples.mean()) if n else 0.0)
    se = float(samples.std()) / math.sqrt(n) if n > 1 else (0.0 if n == 0 else math.nan)
    return TraceResult(est, se, spent(), time.perf_counter() - start, method, n,
                       0 if Q is None else len(Q), op.backend)


def hessian_trace(model: nn.Module | HessianOperator, loss_fn: LossFn | None = None,
                  data: Iterable[Batch] | None = None, n_hvp: int = 100, method: str = "hutch++",
                  target_stderr: float | None = None, seed: int = 0, sketch: int | None = None,
                  **op_kwargs) -> TraceResult:
    """Trace of the loss Hessian of ``model`` on ``data`` with its standard error.

    ``model`` may be a prebuilt ``HessianOperator`` (omit loss_fn and data); op_kwargs go to
    ``HessianOperator``. Cost: at most ``n_hvp`` Hessian-vector products (see ``trace_estimate``).
    """
    start = time.perf_counter()
    op = as_operator(model, loss_fn, data, **op_kwargs)
    r = trace_estimate(op, n_hvp=n_hvp, method=method, target_stderr=target_stderr, seed=seed,
                       sketch=sketch)
    return TraceResult(r.estimate, r.stderr, r.n_hvp, time.perf_counter() - start, r.method,
                       r.n_probes, r.sketch_rank, r.backend)
