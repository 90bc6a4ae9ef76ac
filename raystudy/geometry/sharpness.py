"""Random-perturbation SAM-sharpness: mean |L(w + delta) - L(w)| / rho over Gaussian draws."""
from __future__ import annotations

import copy
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
PRECISIONS = ("auto", "native", "float64")
PILOT_DRAWS = 4  # precision="auto": draws evaluated in both precisions to judge the native one
PILOT_RTOL = 1e-2  # native is kept if every pilot |dL| is within this share of the mean float64 |dL|


@dataclass(frozen=True)
class SharpnessEstimate:
    """Statistics of ``|L(w + delta) - L(w)| / rho`` over ``n_draws`` perturbations.

    ``std`` is the population std over draws (ddof=0, numpy's default), ``median`` interpolates
    (numpy's convention) for an even number of draws; ``stderr`` the standard
    error of ``mean`` (ddof=1 std / sqrt(n_draws); NaN for one draw). ``base_loss`` is L(w).
    ``n_forward`` counts full passes over the data this estimate needs (1 base + n_draws, plus the
    1 + PILOT_DRAWS passes of an "auto" pilot in the precision not used, or the one native base pass
    of a forced float64 run; in a sweep the base pass,
    the pilot and the draws of z are shared between rhos, the passes are not). ``precision``: the
    dtype the losses and perturbations were computed in ("float32", "float64", ...).
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
    precision: str


def _perturbed(base: dict[str, Tensor], z: Tensor, scale: float) -> dict[str, Tensor]:
    """Parameter sets ``base + scale * z`` for a chunk ``z`` of k flat draws (k x d): name -> (k, *shape)."""
    out, offset = {}, 0
    for name, p in base.items():
        n = p.numel()
        delta = z[:, offset : offset + n].reshape(len(z), *p.shape).to(p.dtype)
        out[name] = p.unsqueeze(0) + scale * delta
        offset += n
    return out


class _Losses:
    """L at perturbed parameters of one model, in that model's dtype; the model is never modified
    (``functional_call``). Building it costs one pass (the base loss)."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, batches: list[Batch], vectorise: bool):
        self.model, self.loss_fn, self.batches, self.vectorise = model, loss_fn, batches, vectorise
        self.base = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        if not self.base:
            raise ValueError("model has no trainable parameters to perturb")
        self.dtype = functools.reduce(torch.promote_types, [p.dtype for p in self.base.values()])
        self.device = next(iter(self.base.values())).device
        self.base_loss = float(mean_loss(model, loss_fn, batches))

    def __call__(self, z: Tensor, scale: float) -> Tensor:
        """Losses (k,) float64 on the CPU at ``base + scale * z`` for the k rows of ``z``."""
        params = _perturbed(self.base, z.to(self.device, self.dtype), scale)
        if self.vectorise:
            try:
                fn = functools.partial(mean_loss, self.model, self.loss_fn, self.batches)
                return torch.func.vmap(lambda p: fn(params=p))(params).double().cpu()
            except Exception:  # noqa: BLE001 - no vmap rule for an op (or no memory for a chunk): loop
                self.vectorise = False
        return torch.stack([mean_loss(self.model, self.loss_fn, self.batches,
                                      params={k: v[i] for k, v in params.items()})
                            for i in range(len(z))]).double().cpu()


def _float64_losses(model: nn.Module, loss_fn: LossFn, batches: list[Batch], vectorise: bool) -> _Losses:
    """A ``_Losses`` of a float64 copy of ``model`` (eval mode) on float64 copies of the float data."""
    wide = copy.deepcopy(model).to(torch.float64).eval()
    cast = lambda t: t.to(torch.float64) if t.is_floating_point() else t
    return _Losses(wide, loss_fn, [(cast(x), cast(y)) for x, y in batches], vectorise)


def _draws(gen: torch.Generator, k: int, d: int) -> Tensor:
    """(k, d) float64 N(0, 1) on the CPU, one ``normal_`` of d per row: the sequence depends on
    neither the chunking nor the device or dtype the losses are computed in."""
    z = torch.empty(k, d, dtype=torch.float64)
    for row in z:
        row.normal_(generator=gen)
    return z


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
    precision: str = "auto",
) -> list[SharpnessEstimate]:
    """SAM-sharpness at each radius in ``rhos``: one :class:`SharpnessEstimate` per rho, same order.

    Draw k: ``z_k ~ N(0, I_d)`` (d = trainable parameter count), ``delta_k = rho * z_k / sqrt(d)``,
    value ``|L(w + delta_k) - L(w)| / rho`` with L the sample-weighted mean loss over ``data`` (loss
    units per unit of rho). Only parameters are perturbed: BatchNorm running statistics are buffers
    and stay as trained (eval mode). The model is never modified (``functional_call``), the global
    RNG is untouched: z comes from ``torch.Generator().manual_seed(seed)`` on CPU in float64, one
    ``normal_(d)`` per draw, then moves to the model's device and dtype, so the numbers depend on
    neither the device nor ``chunk_size``.

    Every rho reuses the same z draws (common random numbers): differences between radii then
    reflect the landscape, not different random directions, and z is drawn once.

    Precision: L(w + delta) - L(w) can lie below the resolution of L in float32 (a large MSE, a
    small rho: the difference is then rounding noise, and delta itself is rounded into w).
    "native" computes in the model's dtype; "float64" in a float64 copy of the model and of the
    float inputs/targets (the caller's model untouched; weights perturbed in float64); "auto" (a
    float64 model: native) evaluates the first PILOT_DRAWS draws at the smallest rho both ways and
    keeps the native dtype only if every native |dL| is within PILOT_RTOL of the float64 one
    (relative to their mean), else computes everything in float64 (and if the float64 copy cannot
    run, e.g. a loss with float32 buffers, stays native). ``precision`` in the result says which;
    one precision serves the whole sweep (judged at its smallest rho), so a lone larger rho may
    be computed in float32 where the sweep used float64 (the values agree to PILOT_RTOL).

    Cost: ``1 + len(rhos) * n_draws`` forward passes over ``data`` in the chosen dtype, no
    gradients, plus for "auto" 1 + PILOT_DRAWS passes in the other; float64 runs at the speed of
    the device's float64 units (CPU ~2x float32; data-centre GPUs ~2x; consumer GPUs ~30-60x) and
    needs a float64 copy of the model and data. Draws run ``chunk_size`` at a time (default: up
    to 64, bounded so a chunk of parameter sets holds at most 2^26 elements) through
    ``torch.func.vmap``; if the model cannot be vmapped (``vectorise=False`` or vmap raises) they
    run one by one. Memory: one chunk of perturbed parameter sets (chunk x d elements).

    Args:
        model: the network; measured in eval mode (restored after), never modified.
        loss_fn: ``loss_fn(outputs, targets)`` -> batch-mean loss.
        data: iterable of ``(inputs, targets)`` batches.
        rhos: radii (> 0), in the units of the parameters (the draw's L2 norm is ~rho).
        n_draws: perturbations per radius (shared by all radii).
        seed: seeds the CPU generator of the draws.
        chunk_size: draws evaluated at once (default: see above).
        vectorise: try ``torch.func.vmap`` over a chunk of draws.
        precision: "auto", "native" or "float64" (see above).

    Returns:
        One :class:`SharpnessEstimate` per rho, in the order of ``rhos``; values in loss units per
        unit of rho.

    Raises:
        ValueError: n_draws < 1, no or a non-positive rho, an unknown precision, empty data, or a
            model without trainable parameters.
    """
    if n_draws < 1 or not rhos or any(r <= 0 for r in rhos):
        raise ValueError(f"need n_draws >= 1 and every rho > 0, got n_draws={n_draws}, rhos={list(rhos)}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: expected one of {PRECISIONS}")
    batches = as_batches(data)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    losses: list[list[Tensor]] = [[] for _ in rhos]
    extra = 0

    with eval_mode(model):
        native = _Losses(model, loss_fn, batches, vectorise)
        d = sum(p.numel() for p in native.base.values())
        scales = [rho / math.sqrt(d) for rho in rhos]
        use, first = native, None
        if native.dtype != torch.float64 and precision != "native":
            try:
                wide = _float64_losses(model, loss_fn, batches, vectorise)
            except (RuntimeError, TypeError):  # e.g. a loss with float32 buffers: stay native
                wide = None
            if wide is not None and precision == "float64":
                use, extra = wide, 1  # the native base pass
            elif wide is not None:
                r, k = min(range(len(rhos)), key=lambda i: rhos[i]), min(PILOT_DRAWS, n_draws)
                z = _draws(gen, k, d)
                lo, hi = native(z, scales[r]) - native.base_loss, wide(z, scales[r]) - wide.base_loss
                use = native if float((lo - hi).abs().max()) <= PILOT_RTOL * float(hi.abs().mean()) else wide
                first, extra = (z, r, lo if use is native else hi), 1 + k
        chunk = chunk_size or max(1, min(_MAX_CHUNK, _CHUNK_ELEMENTS // d))
        done = 0
        while done < n_draws:
            if first is not None:
                z, known_r, known = first
                first = None
            else:
                z, known_r, known = _draws(gen, min(chunk, n_draws - done), d), None, None
            for r, scale in enumerate(scales):
                out = known + use.base_loss if r == known_r else use(z, scale)
                losses[r].append(out)
            done += len(z)

    results = []
    for rho, per_chunk in zip(rhos, losses):
        v = (torch.cat(per_chunk) - use.base_loss).abs() / rho
        stderr = float(v.std(correction=1) / math.sqrt(n_draws)) if n_draws > 1 else math.nan
        results.append(
            SharpnessEstimate(
                rho=float(rho), n_draws=n_draws, seed=seed, mean=float(v.mean()),
                std=float(v.std(correction=0)), stderr=stderr, median=float(v.quantile(0.5)),
                min=float(v.min()), max=float(v.max()), base_loss=use.base_loss,
                n_forward=1 + n_draws + extra, precision=str(use.dtype).removeprefix("torch."),
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
    precision: str = "auto",
) -> SharpnessEstimate:
    """SAM-sharpness at one radius ``rho``: see :func:`sam_sharpness_sweep` (same draws).

    Args:
        model, loss_fn, data, n_draws, seed, chunk_size, vectorise, precision: as in
            :func:`sam_sharpness_sweep`.
        rho: the radius (> 0), in parameter units.

    Returns:
        One :class:`SharpnessEstimate` (loss units per unit of rho).

    Cost: ``1 + n_draws`` forward passes over ``data``, plus an "auto" pilot's 1 + PILOT_DRAWS.
    """
    return sam_sharpness_sweep(model, loss_fn, data, [rho], n_draws, seed, chunk_size, vectorise,
                               precision)[0]
