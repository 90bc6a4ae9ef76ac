"""Random-perturbation SAM-sharpness: mean |L(w + delta) - L(w)| / rho over Gaussian draws."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from raystudy.geometry.data import Batch, LossFn, as_batches, eval_mode, mean_loss

# Upper bound on the elements of one chunk of perturbed parameter sets (float32: 256 MiB).
_CHUNK_ELEMENTS = 2**26
_MAX_CHUNK = 64


@dataclass(frozen=True)
class SharpnessEstimate:
    """Statistics of ``|L(w + delta) - L(w)| / rho`` over ``n_draws`` perturbations.

    ``std`` is the population std over draws (ddof=0, numpy's default), ``median`` interpolates
    (numpy's convention) for an even number of draws; ``stderr`` the standard
    error of ``mean`` (ddof=1 std / sqrt(n_draws); NaN for one draw). ``base_loss`` is L(w).
    ``n_forward`` counts full passes over the data this estimate needs (1 base + n_draws; in a
    sweep the base pass and the draws of z are shared between rhos, the passes are not).
    """

    rho: float
    n_draws: int
    seed: int
    mean: float
    std: float
    stderr: float
    median: float
    min: float
    max: float
    base_loss: float
    n_forward: int


def _perturbed(base: dict[str, Tensor], z: Tensor, scale: float) -> dict[str, Tensor]:
    """Parameter sets ``base + scale * z`` for a chunk ``z`` of k flat draws (k x d): name -> (k, *shape)."""
    out, offset = {}, 0
    for name, p in base.items():
        n = p.numel()
        delta = z[:, offset : offset + n].reshape(len(z), *p.shape).to(p.dtype)
        out[name] = p.unsqueeze(0) + scale * delta
        offset += n
    return out


def _chunk_losses(model, loss_fn, batches, base, z, scale, vectorise: bool) -> Tensor:
    """Loss of each perturbed parameter set in the chunk (k,), through ``functional_call``."""
    params = _perturbed(base, z, scale)
    if vectorise:
        fn = functools.partial(mean_loss, model, loss_fn, batches)
        return torch.func.vmap(lambda p: fn(params=p))(params)
    return torch.stack(
        [mean_loss(model, loss_fn, batches, params={k: v[i] for k, v in params.items()}) for i in range(len(z))]
    )


@torch.no_grad()
def sam_sharpness_sweep(
    model: nn.Module,
    loss_fn: LossFn,
    data: Iterable[Batch],
    rhos: Sequence[float],
    n_draws: int = 100,
    seed: int = 0,
    chunk_size: int | None = None,
    vectorise: bool = True,
) -> list[SharpnessEstimate]:
    """SAM-sharpness at each radius in ``rhos``: one :class:`SharpnessEstimate` per rho, same order.

    Draw k: ``z_k ~ N(0, I_d)`` (d = trainable parameter count), ``delta_k = rho * z_k / sqrt(d)``,
    value ``|L(w + delta_k) - L(w)| / rho`` with L the sample-weighted mean loss over ``data`` (loss
    units per unit of rho). Only parameters are perturbed: BatchNorm running statistics are buffers
    and stay as trained (eval mode). The model is never modified (``functional_call``), the global
    RNG is untouched: z comes from ``torch.Generator().manual_seed(seed)`` on CPU, one
    ``randn(d)`` per draw, then moves to the model's device, so the numbers depend on neither the
    device nor ``chunk_size``.

    Every rho reuses the same z draws (common random numbers): differences between radii then
    reflect the landscape, not different random directions, and z is drawn once.

    Cost: ``1 + len(rhos) * n_draws`` forward passes over ``data``, no gradients. Draws run
    ``chunk_size`` at a time (default: up to 64, bounded so a chunk of parameter sets holds at
    most 2^26 elements) through ``torch.func.vmap``; if the model cannot be vmapped
    (``vectorise=False`` or vmap raises) they run one by one.
    """
    if n_draws < 1 or any(r <= 0 for r in rhos):
        raise ValueError(f"need n_draws >= 1 and every rho > 0, got n_draws={n_draws}, rhos={list(rhos)}")
    batches = as_batches(data)
    base = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    if not base:
        raise ValueError("model has no trainable parameters to perturb")
    d = sum(p.numel() for p in base.values())
    dtype = functools.reduce(torch.promote_types, [p.dtype for p in base.values()])
    device = next(iter(base.values())).device
    chunk = chunk_size or max(1, min(_MAX_CHUNK, _CHUNK_ELEMENTS // d))
    gen = torch.Generator(device="cpu").manual_seed(seed)

    with eval_mode(model):
        base_loss = float(mean_loss(model, loss_fn, batches))
        losses = [[] for _ in rhos]
        for start in range(0, n_draws, chunk):
            k = min(chunk, n_draws - start)
            z = torch.empty(k, d, dtype=dtype)
            for row in z:  # one randn(d) per draw: the sequence does not depend on the chunking
                row.normal_(generator=gen)
            z = z.to(device)
            for r, rho in enumerate(rhos):
                scale = rho / math.sqrt(d)
                if vectorise:
                    try:
                        out = _chunk_losses(model, loss_fn, batches, base, z, scale, True)
                    except Exception:  # noqa: BLE001 - no vmap rule for an op (or no memory for a chunk): loop
                        vectorise = False
                if not vectorise:
                    out = _chunk_losses(model, loss_fn, batches, base, z, scale, False)
                losses[r].append(out.detach().double().cpu())

    results = []
    for rho, per_chunk in zip(rhos, losses):
        v = (torch.cat(per_chunk) - base_loss).abs() / rho
        stderr = float(v.std(correction=1) / math.sqrt(n_draws)) if n_draws > 1 else math.nan
        results.append(
            SharpnessEstimate(
                rho=float(rho), n_draws=n_draws, seed=seed, mean=float(v.mean()),
                std=float(v.std(correction=0)), stderr=stderr, median=float(v.quantile(0.5)),
                min=float(v.min()), max=float(v.max()), base_loss=base_loss, n_forward=1 + n_draws,
            )
        )
    return results


def sam_sharpness(
    model: nn.Module,
    loss_fn: LossFn,
    data: Iterable[Batch],
    rho: float,
    n_draws: int = 100,
    seed: int = 0,
    chunk_size: int | None = None,
    vectorise: bool = True,
) -> SharpnessEstimate:
    """SAM-sharpness at one radius ``rho``: see :func:`sam_sharpness_sweep` (same draws, same cost
    with one rho: ``1 + n_draws`` forward passes over ``data``)."""
    return sam_sharpness_sweep(model, loss_fn, data, [rho], n_draws, seed, chunk_size, vectorise)[0]
