"""The safety columns that need more than the clean test pass: corruption robustness, and the test-set
predictions that functional consistency compares across seeds (``analysis.consistency``)."""
from __future__ import annotations

import io
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from raystudy.safety import evaluate
from raystudy.layout import predictions_path
from raystudy.storage import Store
from raystudy.tasks.base import Task

OnDevice = Callable[..., list]


def corruption_columns(task: Task, model: nn.Module, loss_fn, on: OnDevice, max_samples: int | None = None
                       ) -> dict[str, Any]:
    """Accuracy on every (corruption, severity) set of the task's -C release, each on its first
    ``max_samples`` images (None = all): ``corruption_acc`` (mean over sets, every set weighted equally, as
    the paper averages), ``corruption_acc_by`` and ``corruption_set`` (the set's name, e.g. digits-c-v1,
    so a row says which release or generator version it was measured on). Cost: one eval pass per set (95 for CIFAR-10-C).
    Raises ValueError when the task has no corruption set (the plan-time check should have said so)."""
    sets = task.corruptions
    if sets is None:
        raise ValueError(f"task {task.name!r} has no corruption set under its data root")
    by = []
    for corruption, severity in sets.items:
        x, y = sets.load(corruption, severity, max_samples)
        acc = evaluate(model, loss_fn, on(x, y)).accuracy
        by.append({"corruption": corruption, "severity": int(severity), "acc": acc, "n": len(y)})
    return {"corruption_acc": float(np.mean([b["acc"] for b in by])), "corruption_acc_by": by,
            "corruption_set": sets.name}


def write_predictions(store: Store, trial_id: str, epoch: int, logits: torch.Tensor) -> str:
    """Store the test-set predictions of one checkpoint beside its row, compactly: argmax class (int16)
    and softmax probabilities (float16; ~2 bytes per class per image, 2 MB for CIFAR-100's test set).
    Written before the row, so a row that says ``predictions`` always finds its file. Returns its path
    relative to the study root."""
    probs = torch.softmax(logits.detach().double(), dim=1)
    buf = io.BytesIO()
    np.savez_compressed(buf, pred=probs.argmax(1).numpy().astype(np.int16),
                        probs=probs.numpy().astype(np.float16))
    relative = predictions_path(trial_id, epoch)
    store.write_bytes(store.path(*relative.split("/")), buf.getvalue())
    return relative
