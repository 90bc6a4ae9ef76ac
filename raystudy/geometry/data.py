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

    Raises ``ValueError`` if there is no batch or a batch is empty. Costs one pass over ``data``.
    """
    batches = [(x, y) for x, y in data]
    if not batches:
        raise ValueError("data is empty: expected at least one (inputs, targets) batch")
    for i, (x, y) in enumerate(batches):
        if len(x) == 0 or len(x) != len(y):
            raise ValueError(f"batch {i}: {len(x)} inputs for {len(y)} targets")
    return batches


def n_samples(batches: list[Batch]) -> int:
    return sum(len(x) for x, _ in batches)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode (BatchNorm uses running statistics) and restore its mode after."""
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
    """Sample-weighted mean of ``loss_fn`` over all ``batches`` (scalar tensor, differentiable).

    ``params`` (name -> tensor) replaces the model's parameters through ``torch.func.functional_call``
    without touching the module, so perturbed losses never modify weights or BatchNorm buffers.
    Cost: one forward pass over every batch.
    """
    total = n_samples(batches)
    out = None
    for x, y in batches:
        pred = model(x) if params is None else torch.func.functional_call(model, params, (x,))
        term = loss_fn(pred, y) * (len(x) / total)
        out = term if out is None else out + term
    return out


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
