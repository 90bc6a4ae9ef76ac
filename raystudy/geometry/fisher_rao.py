"""Fisher–Rao norm of a classifier (Liang et al. 2019), closed form for cross-entropy."""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from raystudy.geometry.data import Batch, as_batches, eval_mode, n_samples

# Modules that carry one weight "layer" each in the paper's count.
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)


def count_weight_layers(model: nn.Module) -> int:
    """Number of ``nn.Linear`` / ``nn.Conv1d/2d/3d`` / ``nn.Embedding`` modules in ``model``.

    Subclasses count (e.g. the ``out_proj`` of ``nn.MultiheadAttention``); raw ``nn.Parameter``
    weights outside such modules (its ``in_proj_weight``) do not.

    Args:
        model: any module.

    Returns:
        The count L (an int). Cost: one walk over the modules.
    """
    return sum(isinstance(m, WEIGHT_LAYERS) for m in model.modules())


@torch.no_grad()
def fisher_rao_norm(model: nn.Module, data: Iterable[Batch]) -> float:
    """Fisher–Rao norm of ``model`` under cross-entropy on ``data``.

    ``FR = sqrt((L+1)^2 * mean_i (<softmax(f_i), f_i> - f_i[y_i])^2)`` with ``f_i`` the logits of
    sample ``i`` (shape ``C``), ``y_i`` its class index, the mean over *all* samples of all batches
    (sample-weighted, so an unequal last batch counts correctly) and ``L = count_weight_layers(model)``.

    Convention: this is the paper's (arXiv 2510.12451) code convention. For a bias-free ReLU
    network with L weight layers the logits are positively homogeneous of degree L in the
    weights, so Euler's theorem gives ``<theta, grad loss_i> = L * (<p_i, f_i> - f_i[y_i])``;
    Liang et al. write the factor as (depth + 1) with depth counting hidden layers, and the paper's
    code applies (L+1) to the weight-layer count. We keep (L+1) for comparability with its numbers:
    the result is ``(L+1)/L`` times the Euler-exact value for such networks.

    Args:
        model: a classifier returning (n, C) logits; measured in eval mode (BatchNorm uses
            running statistics), its mode restored after.
        data: iterable of ``(inputs, targets)`` batches, targets (n,) class indices.

    Returns:
        FR, a float (dimensionless, >= 0).

    Raises:
        ValueError: empty data, or outputs that are not (n, C) logits.

    Cost: one forward pass over ``data``, no gradients; memory: one batch's logits in float64.
    """
    batches = as_batches(data)
    total = n_samples(batches)
    n_layers = count_weight_layers(model)
    acc = 0.0
    with eval_mode(model):
        for x, y in batches:
            logits = model(x)
            if logits.ndim != 2:
                raise ValueError(f"expected logits of shape (N, C), got {tuple(logits.shape)}")
            f = logits.double()  # float64: the per-sample terms are differences of similar numbers
            p = torch.softmax(f, dim=-1)
            term = (p * f).sum(-1) - f.gather(-1, y.to(f.device).long().view(-1, 1)).squeeze(-1)
            acc += float((term**2).sum())
    return math.sqrt((n_layers + 1) ** 2 * acc / total)
