"""Checkpoint files: one self-describing file per (trial, epoch), and one resume point per trial.

``<study>/checkpoints/<trial_id>/epoch_000015.pt`` holds the model and optimiser state, the trial
it belongs to, and the training-side numbers (running loss, wall time). It is written by training
and read by measurement and by a resumed trial; nothing else is needed to re-measure it later.

``<study>/checkpoints/<trial_id>/resume.pt`` holds exactly the same fields at some later epoch: a
resume point, written every ``resume_every`` epochs or minutes and replaced as training goes, so a
killed trial loses minutes rather than everything since its last measured checkpoint. It is never
measured (``list_checkpoints`` does not return it) and is deleted when the trial's last checkpoint is
written. Training resumes from it only when it is the latest intact state before the trial's first missing
checkpoint (``repair.start_point``); otherwise it is simply ignored.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

import torch

# Where checkpoints live is the study layout's business; re-exported for the training loop and the repairs.
from raystudy.layout import checkpoint_epoch, checkpoint_path, checkpoints_dir, resume_path  # noqa: F401
from raystudy.storage import Store, first_line

FORMAT = 1


class CheckpointError(Exception):
    """A checkpoint that cannot be read; ``str(err)`` names the file and the problem."""


@dataclass(frozen=True)
class CheckpointRef:
    trial_id: str
    epoch: int
    path: str




def _write(store: Store, path: str, trial_id: str, epoch: int, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "trial_id": trial_id, "epoch": epoch, **state}, buf)
    store.write_bytes(path, buf.getvalue())


def save_checkpoint(store: Store, trial_id: str, epoch: int, state: dict[str, Any]) -> CheckpointRef:
    """Atomically write ``state`` (tensors and plain data) for ``(trial_id, epoch)``."""
    path = checkpoint_path(store, trial_id, epoch)
    _write(store, path, trial_id, epoch, state)
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
    for path in store.list(checkpoints_dir(store, trial_id), suffix=".pt"):
        epoch = checkpoint_epoch(path)
        if epoch is not None:
            refs.append(CheckpointRef(trial_id, epoch, path))
    return sorted(refs, key=lambda r: r.epoch)




def save_resume_point(store: Store, trial_id: str, epoch: int, state: dict[str, Any]) -> str:
    """Atomically write (or replace) the trial's resume point; ``state`` holds what a checkpoint holds."""
    path = resume_path(store, trial_id)
    _write(store, path, trial_id, epoch, state)
    return path


def delete_resume_point(store: Store, trial_id: str) -> None:
    """Remove the trial's resume point, if any (its last checkpoint has superseded it)."""
    store.delete_file(resume_path(store, trial_id))  # a missing one is not an error


def resume_state(store: Store, trial_id: str, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The state a trial resumes from: the latest of its last measured checkpoint and its resume point
    (by epoch; the measured one on a tie), or None when it has neither. Raises :class:`CheckpointError` for
    a corrupt measured checkpoint; a corrupt resume point is only a lost shortcut: a warning, then ignored.
    Cost: reads the resume point, and the last measured checkpoint when the resume point is not newer."""
    refs = list_checkpoints(store, trial_id)
    resume = None
    if store.exists(resume_path(store, trial_id)):
        try:
            resume = load_checkpoint(store, resume_path(store, trial_id), map_location)
        except CheckpointError as err:
            warnings.warn(f"ignoring the resume point: {first_line(err)}", RuntimeWarning, stacklevel=2)
    if resume is not None and (not refs or resume["epoch"] > refs[-1].epoch):
        return resume
    return load_checkpoint(store, refs[-1].path, map_location) if refs else None
