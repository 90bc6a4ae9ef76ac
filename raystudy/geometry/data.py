"""The data contract every geometry and safety function shares.

``data`` is an iterable of ``(inputs, targets)`` batches. Losses are *sample-weighted* means over
all batches: a batch of n samples whose ``loss_fn`` returns its mean loss counts n times, so an
unequal last batch is weighted correctly (hessian-eigenthings averages batches unweighted; we
do not). ``loss_fn(outputs, targets)`` must return the mean loss over the batch, as
``torch.nn.CrossEntropyLoss()`` and ``MSELoss()`` do by default.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator

import torch
from torch import Tensor, nn

Batch = tuple[Tensor, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


def as_batches(data: Iterable[Batch]) -> list[Batch]:
    """Materialise ``data`` once so estimators can sweep it many times.

    Args:
        data: iterable of ``(inputs, targets)`` batches, inputs (n, ...) and targets (n, ...).

    Returns:
        The batches as a list (the tensors themselves, not copies).

    Raises:
        ValueError: if there is no batch, or a batch is empty or has unequal input/target counts.

    Cost: one pass over ``data``; memory: the references only.
    """
    batches = [(x, y) for x, y in data]
    if not batches:
        raise ValueError("data is empty: expected at least one (inputs, targets) batch")
    for i, (x, y) in enumerate(batches):
        if len(x) == 0 or len(x) != len(y):
            raise ValueError(f"batch {i}: {len(x)} inputs for {len(y)} targets")
    return batches


def n_samples(batches: list[Batch]) -> int:
    """Total number of samples.

    Args:
        batches: list of ``(inputs, targets)``, inputs (n_b, ...).

    Returns:
        sum of n_b (an int). Cost: none (lengths only).
    """
    return sum(len(x) for x, _ in batches)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode (BatchNorm uses running statistics) and restore its mode after.

    Args:
        model: any module; only its top-level ``train(mode)`` flag is saved and restored.

    Yields:
        ``model`` itself, in eval mode. Cost: none.
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def mean_loss(
    model: nn.Module,
    loss_fn: LossFn,
    batches: list[Batch],
    params: dict[str, Tensor] | None = None,
) -> Tensor:
    """Sample-weighted mean of ``loss_fn`` over all ``batches``.

    Args:
        model: called as is (the caller chooses train/eval mode).
        loss_fn: ``loss_fn(outputs, targets)`` -> the batch-mean loss (scalar).
        batches: non-empty list of ``(inputs, targets)`` (see ``as_batches``).
        params: name -> tensor replacing the model's parameters through
            ``torch.func.functional_call`` without touching the module, so perturbed losses never
            modify weights or BatchNorm buffers; may carry a vmapped leading dimension.

    Returns:
        Scalar tensor in loss units, differentiable w.r.t. ``params`` / the parameters.

    Cost: one forward pass over every batch (autograd graphs kept if gradients are enabled).
    """
    total = n_samples(batches)
    out = None
    for x, y in batches:
        pred = model(x) if params is None else torch.func.functional_call(model, params, (x,))
        term = loss_fn(pred, y) * (len(x) / total)
        out = term if out is None else out + term
    return out


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters).

    Args:
        model: any module.

    Returns:
        a ``torch.device``. Cost: none.
    """
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
