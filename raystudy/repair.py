"""Where a trial's training starts so that every checkpoint it is missing gets rebuilt. Plain torch: no Ray.

A trial's checkpoints may have gaps: one set aside as corrupt (``.corrupt``), one deleted, or the ones a killed
run never reached. Training is seeded epoch by epoch (``train/loop.py``), so a trial resumed from any intact
state before a gap rebuilds the gap's checkpoint bit for bit. ``start_point`` picks the latest intact state
*before the first gap* (never the latest one overall: resuming past a gap would skip it for good).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch

from raystudy.checkpoints import CheckpointError, list_checkpoints, load_checkpoint, resume_path
from raystudy.storage import Store, first_line


@dataclass
class StartPoint:
    state: dict[str, Any] | None  # what training resumes from (None: from scratch)
    missing: list[int]  # the checkpoint epochs to write, ascending; empty: nothing to train
    set_aside: list[str]  # corrupt checkpoints found on the way and moved to ``<path>.corrupt``


def set_aside(store: Store, path: str) -> str:
    """Move a corrupt checkpoint out of the way (renamed ``<path>.corrupt``, kept, never deleted) so it counts
    as missing and is rebuilt; returns what happened, for the one line that reports it."""
    aside = f"{path}.corrupt"
    try:
        store.move(path, aside)
    except (OSError, FileNotFoundError) as err:
        return f"could not set it aside ({first_line(err)})"
    return f"set aside as {aside.rsplit('/', 1)[1]}"


def start_point(store: Store, trial_id: str, checkpoints: list[int], map_location: str | torch.device = "cpu",
                writes: bool = True) -> StartPoint:
    """The state to resume ``trial_id`` from and the checkpoint epochs (of ``checkpoints``) to write.

    Candidates are the trial's checkpoints and its resume point that lie before the first missing epoch,
    latest first (the checkpoint wins a tie). A corrupt checkpoint among them is set aside (if ``writes``;
    one of several data-parallel workers only skips it) and joins the missing ones; a corrupt resume point
    is a lost shortcut: a warning, then skipped. Cost: one listing; reads the resume point, the chosen
    checkpoint and each corrupt one tried before it."""
    refs = list_checkpoints(store, trial_id)
    missing = set(checkpoints) - {r.epoch for r in refs}
    if not missing:
        return StartPoint(None, [], [])
    resume = None
    if store.exists(resume_path(store, trial_id)):
        try:
            resume = load_checkpoint(store, resume_path(store, trial_id), map_location)
        except CheckpointError as err:
            warnings.warn(f"ignoring the resume point: {first_line(err)}", RuntimeWarning, stacklevel=2)
    aside = []
    before = [r for r in reversed(refs) if r.epoch < min(missing)]  # not beyond a gap: that would skip it
    for ref in before:
        if resume is not None and ref.epoch < resume["epoch"] < min(missing):
            return StartPoint(resume, sorted(missing), aside)
        try:
            return StartPoint(load_checkpoint(store, ref.path, map_location), sorted(missing), aside)
        except CheckpointError as err:
            aside.append(f"{err}; {set_aside(store, ref.path) if writes else 'skipped'}")
            missing.add(ref.epoch)
    if resume is not None and resume["epoch"] < min(missing):
        return StartPoint(resume, sorted(missing), aside)
    return StartPoint(None, sorted(missing), aside)

