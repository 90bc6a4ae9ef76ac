"""Functional consistency between models trained from different seeds."""
from __future__ import annotations

import itertools

import torch
from torch import Tensor


def _labels(pred: Tensor) -> Tensor:
    return pred.argmax(dim=-1) if pred.ndim == 2 else pred


def disagreement(pred_a: Tensor, pred_b: Tensor) -> float:
    """Fraction of inputs whose predicted classes differ (a float in [0, 1]).

    Args:
        pred_a, pred_b: (N, C) outputs (logits or probabilities: argmax is taken) or (N,) labels.

    Returns:
        ``1 - mean(argmax a == argmax b)``, a float fraction in [0, 1].

    Raises:
        ValueError: shapes that differ, are not (N,)/(N, C), or are empty.

    Cost: O(N * C).
    """
    a, b = _labels(pred_a.detach().cpu()), _labels(pred_b.detach().cpu())
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"expected two non-empty (N,) or (N, C) inputs of equal N, got {tuple(a.shape)}, {tuple(b.shape)}")
    return 1.0 - float((a == b).double().mean())


def js_divergence(probs_a: Tensor, probs_b: Tensor) -> float:
    """Mean over inputs of the Jensen–Shannon divergence between two predictive distributions.

    ``JS(p, q) = KL(p||m)/2 + KL(q||m)/2`` with ``m = (p + q)/2``, natural log; 0 log 0 = 0.

    Args:
        probs_a, probs_b: (N, C) probabilities.

    Returns:
        The mean JS divergence in nats, a float in [0, ln 2].

    Raises:
        ValueError: shapes that differ or are not (N, C).

    Cost: O(N * C) in float64.
    """
    if probs_a.shape != probs_b.shape or probs_a.ndim != 2:
        raise ValueError(f"expected two (N, C) inputs of equal shape, got {tuple(probs_a.shape)}, {tuple(probs_b.shape)}")
    p, q = probs_a.detach().double().cpu(), probs_b.detach().double().cpu()
    m = (p + q) / 2
    # m is 0 only where p and q both are; there xlogy(0, .) = 0, so any positive m avoids 0/0.
    m = torch.where(m > 0, m, torch.ones_like(m))
    kl_pm = torch.xlogy(p, p / m).sum(dim=1)
    kl_qm = torch.xlogy(q, q / m).sum(dim=1)
    return float((kl_pm / 2 + kl_qm / 2).mean())


def pairwise_consistency(outputs_by_seed: dict[int, Tensor], from_logits: bool = True) -> dict[str, float | int]:
    """Disagreement and JS divergence averaged over every ordered pair of seeds (i != j).

    Both measures are symmetric, so each unordered pair is computed once and the mean over
    ordered pairs equals theirs.

    Args:
        outputs_by_seed: seed -> (N, C) outputs on the same N test inputs.
        from_logits: the outputs are logits (softmax applied), else probabilities.

    Returns:
        ``{"disagreement": fraction in [0, 1], "js_divergence": nats, "n_pairs": k (k - 1)}`` for
        k seeds (90 for 10).

    Raises:
        ValueError: fewer than 2 seeds, or outputs of mismatched shapes.

    Cost: k(k-1)/2 pair comparisons, O(N * C) each.
    """
    if len(outputs_by_seed) < 2:
        raise ValueError(f"need outputs from at least 2 seeds, got {len(outputs_by_seed)}")
    probs = {
        s: (torch.softmax(o.detach().double(), dim=-1) if from_logits else o.detach().double())
        for s, o in outputs_by_seed.items()
    }
    dis, js = [], []
    for a, b in itertools.combinations(sorted(probs), 2):
        dis.append(disagreement(probs[a], probs[b]))
        js.append(js_divergence(probs[a], probs[b]))
    k = len(probs)
    return {"disagreement": sum(dis) / len(dis), "js_divergence": sum(js) / len(js), "n_pairs": k * (k - 1)}
