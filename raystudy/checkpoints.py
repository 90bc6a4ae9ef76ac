"""Checkpoint files: one self-describing file per (trial, epoch).

``<study>/checkpoints/<trial_id>/epoch_000015.pt`` holds the model and optimiser state, the trial
it belongs to, and the training-side numbers (running loss, wall time). It is written by training
and read by measurement and by a resumed trial; nothing else is needed to re-measure it later.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

import torch

from raystudy.storage import Store

FORMAT = 1


class CheckpointError(Exception):
    """A checkpoint that cannot be read; ``str(err)`` names the file and the problem."""


@dataclass(frozen=True)
class CheckpointRef:
    trial_id: str
    epoch: int
    path: str


def checkpoint_path(store: Store, trial_id: str, epoch: int) -> str:
    return store.path("checkpoints", trial_id, f"epoch_{epoch:06d}.pt")


def save_checkpoint(store: Store, trial_id: str, epoch: int, state: dict[str, Any]) -> CheckpointRef:
    """Atomically write ``state`` (tensors and plain data) for ``(trial_id, epoch)``."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "trial_id": trial_id, "epoch": epoch, **state}, buf)
    path = checkpoint_path(store, trial_id, epoch)
    store.write_bytes(path, buf.getvalue())
    return CheckpointRef(trial_id, epoch, path)


def load_checkpoint(store: Store, path: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint; raise :class:`CheckpointError` naming ``path`` if it is missing or corrupt."""
    try:
        blob = store.read_bytes(path)
    except (OSError, FileNotFoundError) as err:
        raise CheckpointError(f"{path}: cannot read checkpoint: {err}") from None
    try:
        state = torch.load(io.BytesIO(blob), map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several unrelated types for truncated/garbled files
        raise CheckpointError(f"{path}: corrupt checkpoint ({type(err).__name__}: {err})".splitlines()[0]) from None
    for key in ("format", "trial_id", "epoch", "model", "trial"):
        if not isinstance(state, dict) or key not in state:
            raise CheckpointError(f"{path}: field '{key}' missing: not a raystudy checkpoint")
    return state


def list_checkpoints(store: Store, trial_id: str) -> list[CheckpointRef]:
    """The trial's checkpoints on storage, by epoch (ignores half-written temporary files)."""
    refs = []
    for path in store.list(store.path("checkpoints", trial_id), suffix=".pt"):
        m = re.search(r"epoch_(\d+)\.pt$", path)
        if m:
            refs.append(CheckpointRef(trial_id, int(m.group(1)), path))
    return sorted(refs, key=lambda r: r.epoch)
