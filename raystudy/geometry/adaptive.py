"""Adaptive worst-case and average-case sharpness (Andriushchenko et al., ICML 2023).

With c = |w| (``adaptive``) or c = 1, perturbations are delta = c * u (elementwise) with u in the
ball ||u||_p <= rho, p in {2, inf}. Scaling a layer's weights by a and the next layer's by 1/a
scales c and delta alike, so a ReLU network's adaptive sharpness does not change: every step
below runs in the u coordinates, where the rescaled problem is the same problem.

- worst case:   mean over m-batches S of  max_u L_S(w + c*u) - L_S(w)
- average case: E_u [L(w + c*u) - L(w)],  u ~ N(0, rho^2 I) (norm="l2", the paper's definition)
                or u ~ U[-rho, rho]^d (norm="linf", the authors' code's ``avg_linf``).

Which parameters: the authors' code perturbs every tensor of ``model.parameters()`` (weights,
biases, normalisation-layer affine parameters), adaptive or not; their ``layer_name_pattern``
argument is accepted but unused. ``perturb="all"`` (default) does the same; ``"weights"`` leaves
biases and normalisation-layer parameters unperturbed. BatchNorm running statistics are buffers:
never perturbed, never updated (eval mode, ``functional_call``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor, nn

from raystudy.geometry.data import Batch, LossFn, as_batches, eval_mode, mean_loss, n_samples

_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
_MOMENTUM = 0.75  # APGD's alpha: weight of the new projected step against the previous move
_MIN_UPDATE_RATIO = 0.75  # APGD's rho: halve the step when fewer steps than this improved


@dataclass(frozen=True)
class AdaptiveSharpness:
    """Adaptive (or plain, ``adaptive=False``) sharpness; ``mean`` in loss units (not divided by rho).

    ``values``: the sharpness of each m-batch, in data order (worst case), or L(w + delta_k) - L(w)
    for each draw k (average case). ``mean`` weights m-batches by their sample count (only a short
    last m-batch differs); ``std`` the matching weighted population std; ``stderr`` = std /
    sqrt(len(values) - 1) (the usual ddof=1 standard error when weights are equal; NaN for one
    value). ``base_loss``: L(w) over all data. ``n_params``: perturbed scalars. ``n_forward`` /
    ``n_backward``: passes over all of ``data`` (each m-batch gets the same number of passes).
    """

    kind: str
    norm: str
    adaptive: bool
    rho: float
    m: int | None
    perturb: str
    seed: int
    mean: float
    std: float
    stderr: float
    values: tuple[float, ...]
    base_loss: float
    n_samples: int
    n_params: int
    n_iter: int | None
    n_restarts: int | None
    n_draws: int | None
    n_forward: int
    n_backward: int


def _perturbed_names(model: nn.Module, perturb: str) -> list[str]:
    skip = set()
    if perturb == "weights":
        for prefix, module in model.named_modules():
            if isinstance(module, _NORM_LAYERS):
                skip |= {f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False)}
    return [
        n for n, p in model.named_parameters()
        if p.requires_grad and n not in skip and not (perturb == "weights" and n.split(".")[-1] == "bias")
    ]


def _m_batches(batches: list[Batch], m: int | None) -> list[list[Batch]]:
    """Consecutive chunks of m samples in data order (the last may be shorter), each a list of
    slices cut at the caller's batch boundaries too, so no forward pass is larger than theirs."""
    if m is None:
        return [batches]
    chunks, current, room = [], [], m
    for x, y in batches:
        start = 0
        while start < len(x):
            take = min(room, len(x) - start)
            current.append((x[start : start + take], y[start : start + take]))
            start, room = start + take, room - take
            if room == 0:
                chunks.append(current)
                current, room = [], m
    if current:
        chunks.append(current)
    return chunks


def _checkpoints(n_iter: int) -> set[int]:
    """APGD's step-size checkpoints (Croce & Hein 2020): after ceil(p_j * n_iter) steps, with
    p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)."""
    p, out = [0.0, 0.22], set()
    while p[-1] <= 1.0:
        out.add(math.ceil(p[-1] * n_iter))
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return {k for k in out if 0 < k <= n_iter}


class _Ball:
    """The ball ||u||_p <= rho in the scaled coordinates u: its projection and steepest ascent."""

    def __init__(self, norm: str, rho: float):
        self.norm, self.rho = norm, rho

    def project(self, u: Tensor) -> Tensor:
        if self.norm == "linf":
            return u.clamp(-self.rho, self.rho)
        size = u.norm()
        return u * (self.rho / size) if size > self.rho else u

    def ascent(self, g: Tensor) -> Tensor:
        if self.norm == "linf":
            return g.sign()
        size = g.norm()
        return g / size if size > 0 else g

    def draw(self, d: int, gen: torch.Generator, surface: bool) -> Tensor:
        """A float64 CPU draw: uniform in the Linf ball; for L2, uniform on the sphere of radius rho
        (``surface``, restarts) or N(0, rho^2 I) (average case)."""
        if self.norm == "linf":
            return (2 * torch.rand(d, generator=gen, dtype=torch.float64) - 1) * self.rho
        z = torch.randn(d, generator=gen, dtype=torch.float64)
        return z * (self.rho / z.norm()) if surface else z * self.rho


def _ascend(evaluate, ball: _Ball, u0: Tensor, n_iter: int) -> tuple[float, float]:
    """(loss at u0, largest loss found) by APGD-style ascent from u0 (Croce & Hein 2020): ``n_iter``
    steps of projected gradient ascent with momentum 0.75, step 2*rho, halved at the checkpoints
    that made too little progress. After a cut the ascent restarts from the best point and its
    gradient, without momentum (the authors' code reloads the best weights but then keeps stepping
    from the stale perturbation, which discards them). One evaluation per step, the last without
    a gradient: n_iter + 1 forward and n_iter backward passes."""
    checkpoints = _checkpoints(n_iter)
    eta = 2 * ball.rho
    u = u_prev = u0
    start, g = evaluate(u, True)
    best, u_best, g_best = start, u, g
    improved, last_cp, eta_cp, best_cp = 0, 0, eta, best
    for k in range(1, n_iter + 1):
        z = ball.project(u + eta * ball.ascent(g))
        u_next = z if u_prev is u else ball.project(u + _MOMENTUM * (z - u) + (1 - _MOMENTUM) * (u - u_prev))
        u_prev, u = u, u_next
        loss, g = evaluate(u, k < n_iter)
        if loss > best:
            best, u_best, g_best = loss, u, g
            improved += 1
        if k in checkpoints:
            stalled = improved < _MIN_UPDATE_RATIO * (k - last_cp) or (eta_cp == eta and best_cp == best)
            eta_cp, best_cp, last_cp, improved = eta, best, k, 0
            if stalled:
                eta /= 2
                u = u_prev = u_best
                g = g_best
    return start, best


def adaptive_sharpness(
    model: nn.Module,
    loss_fn: LossFn,
    data: Iterable[Batch],
    rho: float,
    kind: str = "worst",
    norm: str = "l2",
    adaptive: bool = True,
    m: int | None = None,
    n_iter: int = 20,
    n_restarts: int = 1,
    n_draws: int = 100,
    seed: int = 0,
    perturb: str = "all",
) -> AdaptiveSharpness:
    """Worst-case (``kind="worst"``) or average-case (``"average"``) sharpness at radius ``rho``.

    ``data`` is cut into consecutive chunks of ``m`` samples in data order (``m=None``: all of
    ``data`` is one chunk); the worst case is maximised on each chunk separately and averaged
    (m-sharpness). The average case takes ``m=None`` only: its mean does not depend on m.

    Worst case, per m-batch and restart: ``n_iter`` steps of APGD-style ascent (see
    :func:`_ascend`); restart 0 starts at delta = 0 (the authors' published setting), later ones at
    a random point of the ball (at an exact stationary point the L2 ascent from delta = 0 cannot
    move: only restarts leave it). Cost: ``n_restarts * (n_iter + 1)`` forward and
    ``n_restarts * n_iter`` backward passes over ``data``. Average case: ``n_draws`` draws of u;
    cost ``1 + n_draws`` forward passes, no backward. Random numbers come from
    ``torch.Generator().manual_seed(seed)`` on the CPU; the model (parameters and buffers) and the
    global RNG are left as they were. Memory: a few flat copies of the d perturbed parameters
    (w, c, u, the gradient, the best point).

    Args:
        model: the network; measured in eval mode (restored after), never modified.
        loss_fn: ``loss_fn(outputs, targets)`` -> batch-mean loss.
        data: iterable of ``(inputs, targets)`` batches.
        rho: radius of the ball of u (> 0): relative to |w| when ``adaptive``, else in parameter
            units.
        kind: "worst" or "average".
        norm: "l2" or "linf", the ball's norm.
        adaptive: scale perturbations by c = |w| elementwise (else c = 1).
        m: samples per m-batch for the worst case (None: all of ``data``).
        n_iter, n_restarts: ascent steps and starts per m-batch (worst case).
        n_draws: draws of u (average case).
        seed: seeds the CPU generator of restarts and draws.
        perturb: "all" parameters or "weights" only (no biases, no normalisation parameters).

    Returns:
        :class:`AdaptiveSharpness`, ``mean`` in loss units (not divided by rho).

    Raises:
        ValueError: on bad arguments, empty data or no parameter to perturb.
    """
    if kind not in ("worst", "average") or norm not in ("l2", "linf") or perturb not in ("all", "weights"):
        raise ValueError(f"kind must be worst|average, norm l2|linf, perturb all|weights: {kind}, {norm}, {perturb}")
    if not rho > 0 or min(n_iter, n_restarts, n_draws) < 1 or (m is not None and m < 1):
        raise ValueError(f"need rho > 0, m >= 1, n_iter, n_restarts, n_draws >= 1; got rho={rho}, m={m}")
    if kind == "average" and m is not None:
        raise ValueError("m-sharpness is defined for kind='worst'; the average case takes m=None")
    batches = as_batches(data)
    names = _perturbed_names(model, perturb)
    if not names:
        raise ValueError("model has no trainable parameters to perturb")
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    w0 = torch.cat([params[n].detach().reshape(-1) for n in names])
    scale = w0.abs() if adaptive else torch.ones_like(w0)
    ball, gen, total = _Ball(norm, rho), torch.Generator(device="cpu").manual_seed(seed), n_samples(batches)

    def as_params(flat: Tensor) -> dict[str, Tensor]:
        return dict(zip(names, (t.view(s) for t, s in zip(flat.split([math.prod(s) for s in shapes]), shapes))))

    with eval_mode(model):
        if kind == "average":
            with torch.no_grad():
                base = float(mean_loss(model, loss_fn, batches))
                values = []
                for _ in range(n_draws):
                    flat = w0 + scale * ball.draw(len(w0), gen, surface=False).to(w0)
                    values.append(float(mean_loss(model, loss_fn, batches, as_params(flat))) - base)
            weights = [1 / n_draws] * n_draws
            passes = dict(n_forward=1 + n_draws, n_backward=0, n_iter=None, n_restarts=None, n_draws=n_draws)
        else:
            values, weights, base = [], [], 0.0
            for pieces in _m_batches(batches, m):
                size = sum(len(x) for x, _ in pieces)

                def evaluate(u: Tensor, need_grad: bool) -> tuple[float, Tensor | None]:
                    flat = (w0 + scale * u).detach().requires_grad_(need_grad)
                    loss, grad = 0.0, torch.zeros_like(w0) if need_grad else None
                    with torch.set_grad_enabled(need_grad):
                        for x, y in pieces:
                            out = torch.func.functional_call(model, as_params(flat), (x,))
                            term = loss_fn(out, y) * (len(x) / size)
                            if need_grad:
                                grad += torch.autograd.grad(term, flat)[0]
                            loss += float(term.detach())
                    return loss, None if grad is None else grad * scale  # chain rule: dL/du = c * dL/d(delta)

                base_s, worst = _ascend(evaluate, ball, torch.zeros_like(w0), n_iter)
                for _ in range(1, n_restarts):  # c = 0 coordinates cannot move delta: no budget on them
                    u0 = ball.draw(len(w0), gen, surface=True).to(w0) * (scale != 0)
                    worst = max(worst, _ascend(evaluate, ball, u0, n_iter)[1])
                values.append(worst - base_s)
                weights.append(size / total)
                base += base_s * size / total
            passes = dict(n_forward=n_restarts * (n_iter + 1), n_backward=n_restarts * n_iter,
                          n_iter=n_iter, n_restarts=n_restarts, n_draws=None)

    v, wts = torch.tensor(values, dtype=torch.float64), torch.tensor(weights, dtype=torch.float64)
    mean = float((wts * v).sum())
    std = float((wts * (v - mean) ** 2).sum().sqrt())
    return AdaptiveSharpness(
        kind=kind, norm=norm, adaptive=adaptive, rho=float(rho), m=m, perturb=perturb, seed=seed,
        mean=mean, std=std, stderr=std / math.sqrt(len(v) - 1) if len(v) > 1 else math.nan,
        values=tuple(values), base_loss=base, n_samples=total, n_params=len(w0), **passes,
    )
