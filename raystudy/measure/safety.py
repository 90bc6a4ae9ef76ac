"""The safety columns that need more than the clean test pass: corruption robustness, and the test-set
predictions that functional consistency compares across seeds (``analysis.consistency``)."""
from __future__ import annotations

import io
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from raystudy.safety import evaluate
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


def predictions_path(trial_id: str, epoch: int) -> str:
    """Where a checkpoint's predictions live, relative to the study root (what the row records); a
    re-measure overwrites them."""
    return f"results/{trial_id}/epoch_{epoch:06d}.predictions.npz"


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


def read_predictions(store: Store, relative: str) -> tuple[np.ndarray, np.ndarray]:
    """(classes (N,) int64, probabilities (N, C) float64 renormalised after float16 storage) of a stored
    file, given its path relative to the study root as a row records it. The path comes from a file anyone
    with write access to the bucket could have crafted: ValueError unless it names a predictions file inside
    the study's results/ folder (no '..', no absolute path), so nothing outside the study is ever read."""
    parts = str(relative).split("/")
    if (len(parts) < 3 or parts[0] != "results" or any(p in ("", ".", "..") or "\\" in p for p in parts)
            or not parts[-1].endswith(".predictions.npz")):
        raise ValueError(f"{relative!r} is not a predictions file inside the study's results/ folder")
    with np.load(io.BytesIO(store.read_bytes(store.path(*parts))), allow_pickle=False) as f:
        pred, probs = f["pred"].astype(np.int64), f["probs"].astype(np.float64)
    return pred, probs / probs.sum(axis=1, keepdims=True)
