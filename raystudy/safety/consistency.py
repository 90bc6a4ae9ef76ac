"""Functional consistency between models trained from different seeds.

numpy in float64, no torch import: the report computes these from stored predictions without loading torch
(~0.4 GB); torch tensors (any device) are accepted and copied to host memory."""
from __future__ import annotations

import itertools
from typing import Any

import numpy as np


def _host(x: Any) -> np.ndarray:
    """A numpy view of an array, or a torch tensor copied to host memory (floats as float64: numpy has no bf16)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        x = x.double() if x.is_floating_point() else x
    return np.asarray(x)


def _labels(pred: np.ndarray) -> np.ndarray:
    return pred.argmax(axis=-1) if pred.ndim == 2 else pred


def disagreement(pred_a: Any, pred_b: Any) -> float:
    """Fraction of inputs whose predicted classes differ (a float in [0, 1]).

    Args:
        pred_a, pred_b: (N, C) outputs (logits or probabilities: argmax is taken) or (N,) labels, numpy
            arrays or torch tensors.

    Returns:
        ``1 - mean(argmax a == argmax b)``, a float fraction in [0, 1].

    Raises:
        ValueError: shapes that differ, are not (N,)/(N, C), or are empty.

    Cost: O(N * C).
    """
    a, b = _labels(_host(pred_a)), _labels(_host(pred_b))
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"expected two non-empty (N,) or (N, C) inputs of equal N, got {tuple(a.shape)}, {tuple(b.shape)}")
    return 1.0 - float((a == b).mean(dtype=np.float64))


def js_divergence(probs_a: Any, probs_b: Any) -> float:
    """Mean over inputs of the Jensen–Shannon divergence between two predictive distributions.

    ``JS(p, q) = KL(p||m)/2 + KL(q||m)/2`` with ``m = (p + q)/2``, natural log; 0 log 0 = 0.

    Args:
        probs_a, probs_b: (N, C) probabilities, numpy arrays or torch tensors.

    Returns:
        The mean JS divergence in nats, a float in [0, ln 2].

    Raises:
        ValueError: shapes that differ or are not (N, C).

    Cost: O(N * C) in float64.
    """
    p, q = _host(probs_a).astype(np.float64), _host(probs_b).astype(np.float64)
    if p.shape != q.shape or p.ndim != 2:
        raise ValueError(f"expected two (N, C) inputs of equal shape, got {tuple(p.shape)}, {tuple(q.shape)}")
    m = (p + q) / 2
    # m is 0 only where p and q both are; there 0 log 0 = 0, so any positive m avoids 0/0.
    m = np.where(m > 0, m, 1.0)
    kl_pm = _xlogy(p, p / m).sum(axis=1)
    kl_qm = _xlogy(q, q / m).sum(axis=1)
    return float((kl_pm / 2 + kl_qm / 2).mean())


def _xlogy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x log y with 0 log y = 0 (y > 0 wherever x > 0 here), without log(0) warnings."""
    return x * np.log(np.where(x > 0, y, 1.0))


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def pairwise_consistency(outputs_by_seed: dict[int, Any], from_logits: bool = True) -> dict[str, float | int]:
    """Disagreement and JS divergence averaged over every ordered pair of seeds (i != j).

    Both measures are symmetric, so each unordered pair is computed once and the mean over
    ordered pairs equals theirs.

    Args:
        outputs_by_seed: seed -> (N, C) outputs on the same N test inputs (numpy arrays or torch tensors).
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
    host = {s: _host(o).astype(np.float64) for s, o in outputs_by_seed.items()}
    probs = {s: _softmax(o) if from_logits else o for s, o in host.items()}
    dis, js = [], []
    for a, b in itertools.combinations(sorted(probs), 2):
        dis.append(disagreement(probs[a], probs[b]))
        js.append(js_divergence(probs[a], probs[b]))
    k = len(probs)
    return {"disagreement": sum(dis) / len(dis), "js_divergence": sum(js) / len(js), "n_pairs": k * (k - 1)}
