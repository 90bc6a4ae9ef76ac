"""PAC-Bayes magnitude-aware flatness (Jiang et al. 2020, "Fantastic Generalization Measures and Where to
Find Them", measure ``pacbayes.mag.flatness``).

Perturb every trainable weight with magnitude-aware Gaussian noise ``u_i ~ N(0, sigma^2 w_i^2 + eps^2)``
and find the largest ``sigma'`` whose expected loss increase ``E_u[L(w + u)] - L(w)`` stays within
``bound``; the flatness measure is ``1 / sigma'^2`` (large = sharp). Because the noise scales with each
weight's magnitude, ``sigma'`` with ``eps = 0`` is invariant to rescalings that leave the function
unchanged (a ReLU layer times alpha, the next one divided by it), which plain Gaussian sharpness is not.

Jiang et al. bound the increase of the *training error* by 0.1 (classifiers), use ``eps = 1e-3``, a Monte
Carlo estimate of the expectation and a binary search for ``sigma'``. Here ``loss_fn`` is whatever the
caller bounds (the 0-1 error for classifiers, a scale-free relative MSE for regression), and the draws are
common random numbers: one fixed set ``z_k ~ N(0, I)`` serves every ``sigma`` of the search, so the
estimated increase is a smooth function of ``sigma`` and the bisection converges on it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from raystudy.geometry.data import Batch, LossFn, as_batches, eval_mode
from raystudy.geometry.sharpness import _CHUNK_ELEMENTS, _MAX_CHUNK, _draws, _Losses

SIGMA_MAX = 64.0  # noise 64x each weight's magnitude: far beyond any bound a trained model meets


@dataclass(frozen=True)
class PacBayesFlatness:
    """Result of :func:`pac_bayes_flatness`.

    ``sigma``: the largest relative noise scale found whose estimated loss increase is <= ``bound``
    (dimensionless; within ``rtol`` of the crossing). ``flatness``: ``1 / sigma^2`` (inf when even
    ``sigma = 0``, i.e. the eps floor alone, exceeds the bound). ``increase``: the estimated loss increase
    at ``sigma`` (loss units). ``censored``: True when the increase stayed within the bound up to
    ``SIGMA_MAX`` (``sigma`` is then a lower bound). ``n_forward``: full passes over the data it cost.
    """

    sigma: float
    flatness: float
    increase: float
    bound: float
    eps: float
    n_draws: int
    seed: int
    base_loss: float
    censored: bool
    n_forward: int


class _Increase:
    """Estimated ``E_u[L(w+u)] - L(w)`` at any sigma from the same ``n_draws`` draws each time (common
    random numbers): the generator is re-seeded per call and the draws made chunk by chunk, so no
    (n_draws, d) matrix is ever held (d = 11M parameters x 32 draws would be 2.8 GB)."""

    def __init__(self, losses: _Losses, n_draws: int, seed: int, eps: float):
        self.losses, self.n_draws, self.seed, self.eps, self.calls = losses, n_draws, seed, eps, 0
        flat = torch.cat([p.reshape(-1) for p in losses.base.values()]).to(torch.float64).cpu()
        self.w2, self.d = flat.square(), flat.numel()
        self.chunk = max(1, min(_MAX_CHUNK, _CHUNK_ELEMENTS // self.d))

    def __call__(self, sigma: float) -> float:
        std = (sigma**2 * self.w2 + self.eps**2).sqrt()  # (d,) per-weight noise std
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        total, done = 0.0, 0
        while done < self.n_draws:
            z = _draws(gen, min(self.chunk, self.n_draws - done), self.d)
            total += float((self.losses(z * std, 1.0) - self.losses.base_loss).sum())
            done += len(z)
        self.calls += 1
        return total / self.n_draws


@torch.no_grad()
def pac_bayes_flatness(
    model: nn.Module,
    loss_fn: LossFn,
    data: Iterable[Batch],
    bound: float = 0.1,
    eps: float = 1e-3,
    n_draws: int = 32,
    seed: int = 0,
    rtol: float = 1e-3,
    max_steps: int = 40,
) -> PacBayesFlatness:
    """Magnitude-aware PAC-Bayes flatness ``1 / sigma'^2`` of ``model`` at its current weights.

    Args:
        model: measured in eval mode, never modified (perturbed through ``functional_call``).
        loss_fn: mean loss of a batch, ``(outputs (n, ...), targets (n, ...)) -> scalar``; the increase of
            its sample-weighted mean over ``data`` is what ``bound`` limits.
        data: iterable of ``(inputs, targets)`` batches, materialised once.
        bound: allowed expected increase of the loss (its units; Jiang et al.: 0.1 of training error).
        eps: noise floor added to every weight's variance (``eps^2``; weights at 0 still move).
        n_draws: Monte Carlo draws of ``z ~ N(0, I_d)``, d = trainable parameter count, shared by every
            sigma of the search; drawn on the CPU from ``torch.Generator().manual_seed(seed)`` (the global
            RNG is never touched, the numbers do not depend on the device).
        rtol: the search stops when the bracket ``[lo, hi]`` is narrower than ``rtol * hi``.
        max_steps: at most this many evaluations of the increase after the bracket is found.

    Returns:
        :class:`PacBayesFlatness`; ``sigma`` is the bracket's lower end (a value known to meet the bound).

    Cost: one base pass, then ``n_draws`` forward passes over ``data`` per evaluated sigma: about
    ``log2(hi / lo) + log2(1 / rtol)`` ~ 12-25 evaluations, so ~400-800 passes at the default 32 draws;
    memory of one chunk of perturbed parameter sets (see :func:`~raystudy.geometry.sam_sharpness_sweep`).
    """
    if not (bound > 0 and math.isfinite(bound)) or eps < 0 or n_draws < 1 or not 0 < rtol < 1:
        raise ValueError(f"need bound > 0, eps >= 0, n_draws >= 1, 0 < rtol < 1; got bound={bound}, "
                         f"eps={eps}, n_draws={n_draws}, rtol={rtol}")
    batches = as_batches(data)
    with eval_mode(model):
        losses = _Losses(model, loss_fn, batches, vectorise=True)
        increase = _Increase(losses, n_draws, seed, eps)
        lo, lo_value, hi, censored = 0.0, increase(0.0), 1.0, False
        if lo_value > bound:  # the eps floor alone breaks the bound: no sigma' > 0 exists
            return _result(0.0, lo_value, bound, eps, n_draws, seed, losses, False, increase.calls)
        while (value := increase(hi)) <= bound:  # grow the bracket until its top breaks the bound
            lo, lo_value = hi, value
            if hi >= SIGMA_MAX:
                censored = True
                break
            hi *= 2.0
        steps = 0
        while not censored and hi - lo > rtol * hi and steps < max_steps:
            mid = 0.5 * (lo + hi)
            value = increase(mid)
            if value <= bound:
                lo, lo_value = mid, value
            else:
                hi = mid
            steps += 1
    return _result(lo, lo_value, bound, eps, n_draws, seed, losses, censored, increase.calls)


def _result(sigma: float, value: float, bound: float, eps: float, n_draws: int, seed: int,
            losses: _Losses, censored: bool, calls: int) -> PacBayesFlatness:
    return PacBayesFlatness(
        sigma=sigma, flatness=math.inf if sigma == 0 else 1.0 / sigma**2, increase=value, bound=bound,
        eps=eps, n_draws=n_draws, seed=seed, base_loss=losses.base_loss, censored=censored,
        n_forward=1 + calls * n_draws)
