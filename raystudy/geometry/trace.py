"""Hessian trace by Hutchinson and Hutch++, each with an honest standard error.

Hutchinson averages zᵀHz over Rademacher probes z; its standard error is the sample std / sqrt(n).
Hutch++ (Meyer et al. 2021) first captures the dominant eigen-directions - the few outliers that hold
most of a network Hessian's Frobenius norm - exactly: Q = orth(H S) for s sketch probes S, and
tr(QᵀHQ) costs s more products. Only the rest, (I-QQᵀ)H(I-QQᵀ), is estimated by Hutchinson. Given Q
that residual estimate is unbiased and tr(QᵀHQ) + its expectation is exactly tr(H) for every Q, so the
total variance is the expected residual variance: the residual samples' std / sqrt(n) is an honest
standard error of the whole Hutch++ estimate (no repetitions needed).

Capturing costs products that Hutchinson would spend on probes, and where the spectrum has no dominant
part (a network at initialisation) it removes almost nothing: there the classic split is 2-3x worse
than Hutchinson. So by default each sketch round is first taken as plain probes and captured only when
its own Gram matrix predicts a gain (``_sketch_pays``); otherwise they are Hutchinson's first samples.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import Tensor, nn

from raystudy.geometry.data import Batch, LossFn
from raystudy.geometry.hvp import as_operator
from raystudy.geometry.lanczos import BASIS_MEMORY_BYTES, orthogonalise
from raystudy.geometry.operator import LinearOperator, Products
from raystudy.geometry.tall import gram, orthonormal_basis

METHODS = ("hutch++", "hutchinson")
MIN_PROBES = 10  # fewest Hutchinson samples before a standard error is trusted for stopping
SKETCH_ROUND = 8  # adaptive Hutch++: pilot probes, and directions added per sketch round


@dataclass(frozen=True)
class TraceResult:
    """estimate of tr(H) and its standard error (same units as the loss / parameter²).

    n_probes: Hutchinson samples (for hutch++ those of the residual); sketch_rank: columns of Q (0
    for hutchinson, and for hutch++ when it judged plain probes better: then it *is* Hutchinson,
    on the same probes as method="hutchinson" with the same seed); n_hvp: Hessian-vector products
    spent; wall_s: seconds.
    """

    estimate: float
    stderr: float
    n_hvp: int
    wall_s: float
    method: str
    n_probes: int
    sketch_rank: int
    backend: str


def rademacher(n: int, dim: int, gen: torch.Generator, op: Products) -> Tensor:
    """Rademacher probes: random signs +-1, drawn from ``gen`` on the CPU.

    Args:
        n, dim: probes and their length.
        gen: CPU generator (the global RNG is untouched).
        op: anything with ``dtype`` and ``device`` (a ``Products`` view, an operator).

    Returns:
        (n, dim) tensor on the operator's device and dtype.

    Cost: n dim random bits (int8 on the CPU) and one copy to the device.
    """
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


def _hutchinson(op: Products, budget: int, gen: torch.Generator, Q: Tensor | None,
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


def _loo_captured(G: Tensor, rtol: float) -> float:
    """Mean over rows j of ||P_j y_j||², P_j the projector onto the span of the other rows, from
    the Gram matrix G = Y Yᵀ (float64): for isotropic probes this is an unbiased estimate of
    ||P H||_F², the Frobenius energy a sketch of len(G) - 1 probes captures."""
    out = []
    for j in range(len(G)):
        rest = [i for i in range(len(G)) if i != j]
        w, U = torch.linalg.eigh(G[rest][:, rest])
        keep = w > rtol * max(float(w.max()), 0.0)
        proj = float(((U[:, keep].T @ G[rest, j]) ** 2 / w[keep]).sum()) if keep.any() else 0.0
        out.append(min(max(proj, 0.0), float(G[j, j])))
    return sum(out) / len(out)


def _sketch_pays(Y: Tensor, x: Tensor, rank: int, left: int, goal: Goal | None, offset: float,
                 eps: float) -> bool:
    """Whether capturing a round's sketch (``rank`` directions, ``rank`` more Hv) gives a smaller
    error than keeping its probes as plain samples. Y = A Z, x = diag(Zᵀ A Z) for the round's c
    Rademacher probes Z of the current residual operator A = PHP; ``left`` products remain.

    Plain: per-probe variance v = min(sample var of x, 2 F), F = ||A||_F² ~ mean ||y||² (2F bounds
    v: Rademacher variance is 2(||A||_F² - Σ A_ii²)). Sketch: residual per-probe variance at most
    2(F - E), E the energy captured (leave-one-out estimate from the round's Gram matrix), and the
    c probes are spent on the sketch. Without a goal: sketch iff 2(F - E) / (left - rank) <
    v / (left + c). With a goal (stderr s): iff it reaches s in fewer products, rank + 2(F - E)/s²
    against v/s² - c; if neither can within ``left``, as without a goal.
    """
    c = len(x)
    if rank == 0 or c < 2 or left - rank < 2:
        return False
    G = gram(Y)
    energy = float(G.diagonal().mean())
    v_plain = min(float(x.var()), 2 * energy)
    v_sketch = 2 * max(energy - _loo_captured(G, 100 * eps), 0.0)
    if goal is not None:
        s2 = max(goal(offset + float(x.mean())), 1e-300) ** 2
        plain_more = max(MIN_PROBES, v_plain / s2) - c
        sketch_more = rank + max(MIN_PROBES, v_sketch / s2)
        if min(plain_more, sketch_more) <= left:
            return sketch_more < plain_more
    return v_sketch / (left - rank) < v_plain / (left + c)


def _capture(op: Products, Q: Tensor | None, new: Tensor) -> tuple[Tensor, float]:
    """Q extended by the orthonormal rows ``new`` and tr(new H newᵀ). Costs len(new) Hv (blocks
    of H newᵀ are reduced to their trace at once, never stored)."""
    tr = sum(float((blk * op.apply(blk)).sum()) for blk in new.split(op.max_block))
    return (new if Q is None else torch.cat([Q, new])), tr


def _adaptive_sketch(op: Products, n_hvp: int, gen: torch.Generator, goal: Goal | None,
                     cap: int, spent: Callable[[], int]
                     ) -> tuple[Tensor | None, float, Tensor | None]:
    """Rounds of up to SKETCH_ROUND residual probes: each is judged by ``_sketch_pays`` and either
    captured (its products H P Z are the sketch) or kept as the first plain samples, which ends the
    sketch. Returns (Q or None, tr(QᵀHQ), the kept samples or None). Rounds are capped so a
    capture leaves products for the residual, and Q by ``cap`` rows."""
    Q, low_rank, eps = None, 0.0, torch.finfo(op.dtype).eps
    while (c := min(SKETCH_ROUND, (n_hvp - spent()) // 3, cap - (0 if Q is None else len(Q)))) >= 2:
        Z = rademacher(c, op.dim, gen, op)
        if Q is not None:
            Z -= (Z @ Q.T) @ Q
        Y = op.apply(Z)
        if not torch.isfinite(Y).all():
            raise ValueError("a Hessian-vector product is not finite (NaN/inf in the Hessian)")
        x = (Z * Y).sum(1).double().cpu()
        floor = math.sqrt(eps) * float(Y.norm())  # below it: rounding noise, nothing to capture
        if Q is not None:
            orthogonalise(Y, Q)  # Y = P H P Z: the residual operator applied to the probes
        new = orthonormal_basis(Y, floor)
        if Q is not None:
            orthogonalise(new, Q)
        if not _sketch_pays(Y, x, len(new), n_hvp - spent(), goal, low_rank, eps):
            return Q, low_rank, x
        Q, extra = _capture(op, Q, new)
        low_rank += extra
    return Q, low_rank, None


def trace_estimate(op: LinearOperator, n_hvp: int = 100, method: str = "hutch++",
                   target_stderr: float | None = None, seed: int = 0, sketch: int | None = None,
                   target_abs: float | None = None, memory_bytes: int = BASIS_MEMORY_BYTES
                   ) -> TraceResult:
    """tr(A) of a symmetric operator with its standard error (see ``TraceResult``).

    n_hvp: the budget of Hessian-vector products; all of it is spent unless a target is met first.
    Targets: stop once stderr <= max(target_stderr x |estimate|, target_abs), judged from the 10th
    probe on with the 80% upper confidence bound of the variance (the reported stderr is the plain
    estimate); an absolute target keeps a trace near zero, as at initialisation, from using it all.

    hutch++ with ``sketch`` = s: the classic estimator, Q = orth(H S) for s probes (2s Hv), the rest
    Hutchinson on the residual. Without ``sketch`` it adapts, so that it is never expected to do
    worse than plain Hutchinson with the same products: rounds of up to SKETCH_ROUND Rademacher
    probes of the residual operator (the first round: of H) give plain samples and, in their products,
    a sketch. Capturing a direction of eigenvalue θ costs 2 Hv and removes ~2θ² from each probe's
    variance, so a round is captured only if the leave-one-out energy its sketch captures predicts a
    smaller error than keeping its probes (``_sketch_pays``: with budget N and k directions, iff the
    removed share of the variance exceeds ~2k/N, or, with a target, iff fewer products reach it);
    otherwise its probes become the first samples of the final Hutchinson run. A flat spectrum
    (a network at initialisation) thus gets plain Hutchinson on the same probes, a few dominant
    eigenvalues get captured. sketch_rank = 0 in the result: plain Hutchinson was run.
    Rank is capped by ``memory_bytes`` (Q is stored) and by dim.

    Args:
        op: a symmetric ``LinearOperator`` (n x n): a ``HessianOperator``, a ``DenseOperator``, a
            square torch matrix (a numpy one is wrapped).
        n_hvp: product budget (>= 2).
        method: "hutch++" or "hutchinson".
        target_stderr: relative standard error at which to stop (> 0), or None.
        seed: seeds the CPU generator of the probes (the global RNG is untouched).
        sketch: classic Hutch++ with this many sketch probes; None adapts (see above).
        target_abs: absolute standard error at which to stop (> 0), or None.
        memory_bytes: cap on the stored sketch basis Q.

    Returns:
        :class:`TraceResult`: estimate and stderr (operator units: loss / parameter² for a
        Hessian), n_hvp, wall_s, method, n_probes, sketch_rank, backend.

    Raises:
        ValueError: a bad method, budget or target, or a non-finite product.

    Cost: at most ``n_hvp`` products; memory: Q (sketch_rank x n) plus a block of probes.
    """
    start, op = time.perf_counter(), Products(op)
    if method not in METHODS:
        raise ValueError(f"method={method!r}: expected one of {METHODS}")
    if n_hvp < 2:
        raise ValueError(f"n_hvp={n_hvp}: a standard error needs at least 2 products")
    if any(t is not None and t <= 0 for t in (target_stderr, target_abs)):
        raise ValueError(f"target_stderr={target_stderr}, target_abs={target_abs} must be positive")
    goal = None if target_stderr is None and target_abs is None else (
        lambda est: max((target_stderr or 0.0) * abs(est), target_abs or 0.0))
    gen = torch.Generator().manual_seed(seed)
    spent = lambda: op.n_hvp
    Q, low_rank, samples = None, 0.0, None
    cap = min(max(memory_bytes // (op.dim * op.dtype.itemsize), 1), op.dim, (n_hvp - 2) // 2)
    if method == "hutch++" and sketch is not None:
        if (s := min(sketch, cap)) > 0:  # any orthonormal Q keeps the estimate unbiased
            Q = torch.linalg.qr(op.apply(rademacher(s, op.dim, gen, op)).T).Q.T
            Q, low_rank = _capture(op, None, Q)
    elif method == "hutch++":
        Q, low_rank, samples = _adaptive_sketch(op, n_hvp, gen, goal, cap, spent)
    if Q is not None and len(Q) == op.dim:  # Q spans everything: the trace is exact
        samples = torch.zeros(0, dtype=torch.float64)
    else:
        samples = _hutchinson(op, n_hvp - spent(), gen, Q, goal, low_rank, samples)
    n = len(samples)
    est = low_rank + (float(samples.mean()) if n else 0.0)
    se = float(samples.std()) / math.sqrt(n) if n > 1 else (0.0 if n == 0 else math.nan)
    return TraceResult(est, se, spent(), time.perf_counter() - start, method, n,
                       0 if Q is None else len(Q), op.backend)


def hessian_trace(model: nn.Module | LinearOperator, loss_fn: LossFn | None = None,
                  data: Iterable[Batch] | None = None, n_hvp: int = 100, method: str = "hutch++",
                  target_stderr: float | None = None, seed: int = 0, sketch: int | None = None,
                  target_abs: float | None = None, **op_kwargs) -> TraceResult:
    """Trace of the loss Hessian of ``model`` on ``data`` with its standard error.

    Args:
        model: the network, or a prebuilt ``LinearOperator`` (omit loss_fn, data, op_kwargs).
        loss_fn, data: see ``HessianOperator``.
        n_hvp, method, target_stderr, seed, sketch, target_abs: see ``trace_estimate``.
        **op_kwargs: ``HessianOperator`` options.

    Returns:
        :class:`TraceResult` (loss / parameter² units), wall_s including the operator's
        construction.

    Cost: at most ``n_hvp`` Hessian-vector products (+ one forward pass to build the operator).
    """
    start = time.perf_counter()
    op = as_operator(model, loss_fn, data, **op_kwargs)
    r = trace_estimate(op, n_hvp=n_hvp, method=method, target_stderr=target_stderr, seed=seed,
                       sketch=sketch, target_abs=target_abs)
    return TraceResult(r.estimate, r.stderr, r.n_hvp, time.perf_counter() - start, r.method,
                       r.n_probes, r.sketch_rank, r.backend)
