"""Loss, accuracy and raw outputs of a model on a dataset: the input every safety metric reads."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor, nn

from raystudy.geometry.data import Batch, LossFn, as_batches, eval_mode, n_samples


@dataclass
class Evaluation:
    """One pass of a model over a dataset.

    ``loss``: sample-weighted mean of ``loss_fn`` over all samples. ``accuracy``: fraction of
    argmax predictions equal to the targets, in [0, 1]; None when the targets are not class indices
    (float targets: regression). ``outputs``: (N, C) logits or (N, 1) predictions, on CPU.
    ``targets``: (N, ...) on CPU. ``n``: number of samples N.
    """

    loss: float
    accuracy: float | None
    outputs: Tensor
    targets: Tensor
    n: int


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: LossFn, data: Iterable[Batch]) -> Evaluation:
    """Evaluate ``model`` on ``data`` in eval mode (mode restored after).

    Args:
        model: the network, returning (n, C) logits or (n, 1) predictions.
        loss_fn: ``loss_fn(outputs, targets)`` -> batch-mean loss.
        data: iterable of ``(inputs, targets)`` batches (N samples in all).

    Returns:
        :class:`Evaluation`: loss (loss units), accuracy (fraction or None), outputs (N, C) and
        targets on the CPU, n = N.

    Raises:
        ValueError: empty data.

    Cost: one forward pass over ``data``, no gradients; memory: the N x C outputs on the CPU.
    """
    batches = as_batches(data)
    total = n_samples(batches)
    loss, outputs, targets = 0.0, [], []
    with eval_mode(model):
        for x, y in batches:
            out = model(x)
            loss += float(loss_fn(out, y)) * len(x) / total
            outputs.append(out.detach().cpu())
            targets.append(y.detach().cpu())
    out_all, y_all = torch.cat(outputs), torch.cat(targets)
    is_class_index = not (y_all.is_floating_point() or y_all.is_complex()) and y_all.ndim == 1
    accuracy = None
    if is_class_index and out_all.ndim == 2:
        accuracy = float((out_all.argmax(dim=1) == y_all).double().mean())
    return Evaluation(loss=loss, accuracy=accuracy, outputs=out_all, targets=y_all, n=total)
