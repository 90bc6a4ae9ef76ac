"""Relative flatness of the classifier layer (Petzka et al. 2021), exact and scalable."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor, nn

from raystudy.geometry.data import Batch, LossFn, as_batches, eval_mode, n_samples

# Upper bound on the elements of one chunk of per-sample C x C logit Hessians (float64: 128 MiB).
_HESSIAN_CHUNK_ELEMENTS = 2**24
# A feature is constant over the data when its std is at most this many ulps (eps of the dtype the
# model computed it in) of its root mean square, and at most 1e-3 of it (16-bit dtypes).
CONSTANT_FEATURE_ULPS = 1024


@dataclass(frozen=True)
class FlatnessResult:
    """kappa (loss units, see :func:`relative_flatness`); n_features: inputs of the classifier;
    n_constant: those constant over the data (dead ReLU units among them), whose classifier
    columns were excluded."""

    kappa: float
    n_features: int
    n_constant: int


def constant_features(feats: Tensor) -> Tensor:
    """Which features are constant over the data: std <= tol x rms, with
    tol = min(CONSTANT_FEATURE_ULPS x eps(feats.dtype), 1e-3).

    A dead ReLU unit (exact zeros: std = rms = 0) is constant; so is a unit constant in exact
    arithmetic whose float evaluation jitters by a few ulps (a real feature varies far more).

    Args:
        feats: (N, m) features as the model computed them (their dtype sets the tolerance).

    Returns:
        (m,) bool tensor, True where column k is constant over the N samples.

    Cost: O(N m) in float64 (one float64 copy of ``feats``).
    """
    tol = min(CONSTANT_FEATURE_ULPS * torch.finfo(feats.dtype).eps, 1e-3)
    f = feats.double()
    return f.std(dim=0, correction=0) <= tol * f.pow(2).mean(dim=0).sqrt()


def default_classifier(model: nn.Module) -> nn.Linear:
    """The ``nn.Linear`` producing the outputs.

    Args:
        model: any module.

    Returns:
        ``model.classifier`` if it is an ``nn.Linear``, else the last ``nn.Linear`` in
        ``model.modules()``.

    Raises:
        ValueError: if the model has no ``nn.Linear``. Cost: one walk over the modules.
    """
    head = getattr(model, "classifier", None)
    if isinstance(head, nn.Linear):
        return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("model has no nn.Linear to act as the classifier; pass classifier=")
    return linears[-1]


def _features_and_logits(model: nn.Module, head: nn.Linear, batches: list[Batch]):
    """Per batch: (classifier inputs (n, m), model outputs (n, C), targets), via a forward hook."""
    seen: list[tuple[Tensor, Tensor]] = []

    def hook(_module, inputs, output):
        seen.append((inputs[0].detach(), output.detach()))

    out = []
    handle = head.register_forward_hook(hook)
    try:
        with torch.no_grad():
            for x, y in batches:
                seen.clear()
                logits = model(x)
                if len(seen) != 1:
                    raise ValueError(f"classifier ran {len(seen)} times in one forward pass; expected 1")
                feats, head_out = seen[0]
                # kappa's factorisation needs the loss to see W only through the logits z = W f + b.
                if feats.ndim != 2 or not torch.equal(head_out, logits):
                    raise ValueError("the classifier's output must be the model's (N, C) output")
                out.append((feats, logits.detach(), y))
    finally:
        handle.remove()
    return out


def _logit_hessians(loss_fn: LossFn, z: Tensor, y: Tensor) -> Tensor:
    """d^2 loss_n / dz dz for every sample n: (n, C, C), using ``loss_fn`` on a batch of one."""

    def one(zi: Tensor, yi: Tensor) -> Tensor:
        return loss_fn(zi.unsqueeze(0), yi.unsqueeze(0))

    # Reverse-over-reverse rather than torch.func.hessian (forward-over-reverse): every loss with a
    # double backward works, and C x C is too small for the mode to matter.
    return torch.func.vmap(torch.func.jacrev(torch.func.jacrev(one)))(z, y)


def relative_flatness(
    model: nn.Module,
    loss_fn: LossFn,
    data: Iterable[Batch],
    classifier: nn.Linear | None = None,
    normalise_features: bool = True,
) -> float:
    """Relative flatness kappa of ``model``'s classifier layer on ``data``.

    Args:
        model, loss_fn, data, classifier, normalise_features: as in
            :func:`relative_flatness_result`.

    Returns:
        kappa, a float in loss units (``relative_flatness_result(...).kappa``).

    Cost: as :func:`relative_flatness_result` (one forward pass, N per-sample C x C Hessians).
    """
    return relative_flatness_result(model, loss_fn, data, classifier, normalise_features).kappa


def relative_flatness_result(
    model: nn.Module,
    loss_fn: LossFn,
    data: Iterable[Batch],
    classifier: nn.Linear | None = None,
    normalise_features: bool = True,
) -> FlatnessResult:
    """Relative flatness kappa of ``model``'s classifier layer on ``data``, with feature counts.

    ``kappa = sum_{i,j} <w_i, w_j> * Tr(H_{j,i})`` with ``w_i`` the rows of the classifier weight
    ``W`` (C x m) and ``H_{j,i}`` the m x m Hessian block of the sample-weighted mean loss over all
    of ``data`` with respect to rows j and i: the full-set value (the authors' code sums it over
    mini-batches, n_batches times this). ``classifier`` defaults to :func:`default_classifier`; its
    output must be the model's output. With ``normalise_features`` (the protocol), each feature k is
    divided by its population std ``sigma_k`` over ``data`` and ``W[:, k]`` multiplied by it, which
    leaves the function unchanged and makes kappa invariant to neuron-wise rescaling of the layer
    below. Features constant over ``data`` (:func:`constant_features`: dead ReLU units, or units
    with no input dependence) contribute nothing: their columns of W are excluded, as the authors'
    code zeroes them, their value being part of the bias. Otherwise a dead unit's outgoing weights,
    which do not change the function, would change kappa, and a constant's float jitter (sigma
    ~1e-7 of its value) would blow the normalised feature up; so kappa is invariant to every
    function-preserving change of the classifier and of the layer below's scale. Both modes.

    Exact, no sampling: the loss sees W only through ``z_n = W f_n + b``, so
    ``Tr(H_{j,i}) = sum_n (1/N) * A_n[j,i] * ||f_n||^2`` with ``A_n`` the C x C Hessian of sample
    n's loss in its logits. Cost: one forward pass over ``data`` (eval mode, restored after) plus N
    per-sample C x C Hessians (``vmap(jacrev(jacrev))``: C backward passes through the loss each),
    instead of the dense (C*m)^2 Hessian. Memory: the N x m features. The model is not modified.

    Args:
        model: the network; its classifier's output must be the model's (N, C) output.
        loss_fn: ``loss_fn(logits, targets)`` -> batch-mean loss; must support a double backward.
        data: iterable of ``(inputs, targets)`` batches (N samples in all).
        classifier: the layer whose weight W (C x m) is measured; default
            :func:`default_classifier`.
        normalise_features: divide each feature by its std over ``data`` (the protocol).

    Returns:
        :class:`FlatnessResult`: kappa (loss units), n_features (m), n_constant (excluded features).

    Raises:
        ValueError: empty data, a classifier that runs other than once per forward pass, or
            whose output is not the model's.
    """
    batches = as_batches(data)
    total = n_samples(batches)
    head = classifier if classifier is not None else default_classifier(model)
    with eval_mode(model):
        per_batch = _features_and_logits(model, head, batches)

    feats = torch.cat([f for f, _, _ in per_batch])
    live = ~constant_features(feats)
    feats = feats[:, live].double()
    if normalise_features:
        sigma = feats.std(dim=0, correction=0)  # > 0 for every live feature
    else:
        sigma = torch.ones(feats.shape[1], dtype=torch.float64, device=feats.device)
    sq_norms = ((feats / sigma) ** 2).sum(dim=1)  # ||f_n / sigma||^2, one per sample

    n_classes = per_batch[0][1].shape[1]
    chunk = max(1, _HESSIAN_CHUNK_ELEMENTS // n_classes**2)
    trace = torch.zeros(n_classes, n_classes, dtype=torch.float64, device=feats.device)
    start = 0
    for _, z, y in per_batch:
        for z_c, y_c in zip(torch.split(z, chunk), torch.split(y, chunk)):
            hess = _logit_hessians(loss_fn, z_c, y_c).double()
            weights = sq_norms[start : start + len(z_c)] / total
            trace += torch.einsum("n,nij->ij", weights, hess)
            start += len(z_c)

    w = head.weight.detach()[:, live].double() * sigma.unsqueeze(0)  # normalised W (C x m_live)
    gram = w @ w.T  # gram[i, j] = <w_i, w_j>
    return FlatnessResult(float((gram * trace.T).sum()), len(live), int((~live).sum()))
