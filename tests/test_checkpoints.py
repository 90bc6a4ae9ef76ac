"""raystudy.checkpoints with hand-made states (no training): a checkpoint reads back as written and says
what it is, damage is named in one line, listings skip resume points and files in flight, and a trial
resumes from the newer of its last checkpoint and its resume point."""
from __future__ import annotations

import io
import warnings

import pytest
import torch

from raystudy.checkpoints import (CheckpointError, checkpoint_path, delete_resume_point, list_checkpoints,
                                  load_checkpoint, resume_path, resume_state, save_checkpoint, save_resume_point)
from raystudy.storage import Store

TRIAL = "c-circles-mlp-base-s0"


def _state(value: float) -> dict:
    """What training stores, reduced to its shape: weights, the trial record, counters."""
    return {"model": {"w": torch.full((2, 3), value), "b": torch.arange(3.0)}, "trial": {"trial_id": TRIAL},
            "step": int(value * 10), "train_loss_curve": [(1, 0.5)]}


def _saved(obj) -> bytes:
    """``obj`` as torch.save writes it."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "study")


def test_a_checkpoint_reads_back_as_written_and_names_itself(store, tmp_path):
    ref = save_checkpoint(store, TRIAL, 15, _state(1.5))
    assert (ref.trial_id, ref.epoch, ref.path) == (TRIAL, 15, f"{tmp_path}/study/checkpoints/{TRIAL}/epoch_000015.pt")
    back = load_checkpoint(store, ref.path)
    assert (back["format"], back["trial_id"], back["epoch"], back["step"]) == (1, TRIAL, 15, 15)
    assert torch.equal(back["model"]["w"], torch.full((2, 3), 1.5)) and torch.equal(back["model"]["b"], torch.arange(3.0))
    assert back["train_loss_curve"] == [(1, 0.5)] and back["trial"] == {"trial_id": TRIAL}
    assert not [p for p in (tmp_path / "study").rglob("*") if p.name.startswith(".")]  # no temp file left


def test_damage_is_named_in_one_line(store):
    missing = checkpoint_path(store, TRIAL, 3)
    with pytest.raises(CheckpointError, match=rf"^{missing}: cannot read checkpoint"):
        load_checkpoint(store, missing)
    path = save_checkpoint(store, TRIAL, 4, _state(1.0)).path
    blob = store.read_bytes(path)
    store.write_bytes(path, blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match=rf"^{path}: corrupt checkpoint \(") as err:
        load_checkpoint(store, path)
    assert "\n" not in str(err.value)
    foreign = checkpoint_path(store, TRIAL, 5)
    store.write_bytes(foreign, _saved({"model": {}, "epoch": 5}))  # a torch file, but not one of ours
    with pytest.raises(CheckpointError, match=rf"^{foreign}: field 'format' missing: not a raystudy checkpoint"):
        load_checkpoint(store, foreign)
    pickled = checkpoint_path(store, TRIAL, 6)
    store.write_bytes(pickled, _saved({"format": 1, "payload": object()}))  # arbitrary objects: never unpickled
    with pytest.raises(CheckpointError, match=rf"^{pickled}: corrupt checkpoint"):
        load_checkpoint(store, pickled)


def test_listing_is_by_epoch_and_skips_what_is_not_a_checkpoint(store, tmp_path):
    for epoch in (10, 2, 100):
        save_checkpoint(store, TRIAL, epoch, _state(epoch))
    save_resume_point(store, TRIAL, 50, _state(50))
    folder = tmp_path / "study" / "checkpoints" / TRIAL
    (folder / ".epoch_000200.pt.tmp").write_bytes(b"half")
    (folder / "epoch_000004.pt.corrupt").write_bytes(b"set aside")
    assert [r.epoch for r in list_checkpoints(store, TRIAL)] == [2, 10, 100]
    assert list_checkpoints(store, "another-trial") == []


def test_resume_from_the_newer_of_checkpoint_and_resume_point(store):
    assert resume_state(store, TRIAL) is None  # nothing yet: start from scratch
    save_checkpoint(store, TRIAL, 10, _state(10))
    assert resume_state(store, TRIAL)["epoch"] == 10
    assert save_resume_point(store, TRIAL, 10, _state(99)) == resume_path(store, TRIAL)
    assert resume_state(store, TRIAL)["step"] == 100  # a tie: the measured checkpoint
    save_resume_point(store, TRIAL, 17, _state(1.7))
    assert resume_state(store, TRIAL)["epoch"] == 17  # newer: the resume point
    save_checkpoint(store, TRIAL, 20, _state(20))
    assert resume_state(store, TRIAL)["epoch"] == 20  # an older resume point is passed over
    delete_resume_point(store, TRIAL)
    delete_resume_point(store, TRIAL)  # gone already: not an error
    assert not store.exists(resume_path(store, TRIAL)) and resume_state(store, TRIAL)["epoch"] == 20


def test_a_corrupt_resume_point_is_a_warning_a_corrupt_checkpoint_an_error(store):
    save_checkpoint(store, TRIAL, 10, _state(10))
    store.write_bytes(resume_path(store, TRIAL), b"garbage")
    with pytest.warns(RuntimeWarning, match="ignoring the resume point: .*resume.pt: corrupt checkpoint"):
        assert resume_state(store, TRIAL)["epoch"] == 10
    delete_resume_point(store, TRIAL)
    store.write_bytes(checkpoint_path(store, TRIAL, 10), b"garbage")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CheckpointError, match="epoch_000010.pt: corrupt checkpoint"):
            resume_state(store, TRIAL)
