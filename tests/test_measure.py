"""raystudy.measure without Ray: ``measure_checkpoint`` on a tiny circles checkpoint trained in this process gives
the losses and accuracies a plain forward pass gives, names the trial as trained, and nulls (never zeros) what a
non-finite model cannot have; ``write_row`` puts the row where the layout says and keeps one row per checkpoint."""
from __future__ import annotations

import math

import polars as pl
import pytest
import torch
import torch.nn.functional as F

from raystudy.build import build_model, load_trial_task
from raystudy.checkpoints import list_checkpoints, load_checkpoint, save_checkpoint
from raystudy.layout import result_path, row_files
from raystudy.measure import SCHEMA, measure_checkpoint, write_row
from raystudy.study import expand, load_study
from raystudy.storage import Store
from raystudy.train.loop import train_trial
from support.studies import tiny_block, write_study_yaml

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(trial, store, path of its last checkpoint): circles, an MLP of 8 hidden units, 3 epochs (~0.3 s)."""
    tmp = tmp_path_factory.mktemp("measure")
    block = tiny_block(epochs=3, checkpoints=[1], metrics=["fisher_rao"], measure={"batch_size": 7})
    (trial,) = expand(load_study(write_study_yaml(tmp, "m", block)))
    store = Store(tmp / "runs" / "m")
    train_trial(trial, store)
    return trial, store, list_checkpoints(store, trial.trial_id)[-1].path


def _by_hand(trial, store, path) -> dict[str, float]:
    """Losses and accuracies of the checkpoint's model from one full-batch forward pass."""
    task = load_trial_task(trial)
    model = build_model(trial, task)
    model.load_state_dict(load_checkpoint(store, path)["model"])
    model.eval()
    out = {}
    with torch.no_grad():
        for split, x, y in (("train", task.x_train, task.y_train), ("test", task.x_test, task.y_test)):
            logits = model(task.normalise(x))
            out[f"{split}_loss"] = F.cross_entropy(logits, y).item()
            out[f"{split}_acc"] = (logits.argmax(1) == y).double().mean().item()
    return out


def test_losses_and_accuracies_are_a_plain_forward_pass(trained):
    """Batches of 7 (the last one shorter) weighted by their sizes: the full-batch mean, not a mean of means."""
    trial, store, path = trained
    row = measure_checkpoint(store, path)
    want = _by_hand(trial, store, path)
    assert set(row) == set(SCHEMA) and row["status"] == "ok"
    for key, value in want.items():
        assert row[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert row["gen_gap"] == pytest.approx(100 * (want["train_acc"] - want["test_acc"]), abs=1e-9)
    assert row["fisher_rao"] is not None and row["sam_sharpness"] is None  # only what the block lists


@pytest.mark.usefixtures("one_thread")
def test_the_row_records_cpu_and_wall_seconds(trained):
    """cpu_s is this process's CPU clock over the measurement: with one thread and nothing else running, at
    most the wall clock (a little slack for the clocks' resolution), and not zero."""
    trial, store, path = trained
    row = measure_checkpoint(store, path)
    assert row["device"] == "cpu"
    assert 0 < row["cpu_s"] <= row["wall_s"] + 0.01


def test_the_row_names_the_trial_as_trained(trained):
    trial, store, path = trained
    row = measure_checkpoint(store, path)
    assert (row["trial_id"], row["seed"], row["lr"], row["batch_size"], row["factor"]) == (
        trial.trial_id, 0, 0.05, 10, 0.5)
    assert (row["epoch"], row["final"], row["measure_hash"]) == (3, True, trial.measure_hash)
    assert row["step"] == 3 * 5  # 50 training points in batches of 10
    first = measure_checkpoint(store, list_checkpoints(store, trial.trial_id)[0].path)
    assert (first["epoch"], first["final"], first["step"]) == (1, False, 5)


def test_a_non_finite_model_has_null_numbers_not_zeros(trained):
    trial, store, path = trained
    state = load_checkpoint(store, path)
    weights = dict(state["model"])
    name = next(k for k, v in weights.items() if v.is_floating_point())
    weights[name] = torch.full_like(weights[name], math.nan)
    fields = {k: v for k, v in state.items() if k not in ("format", "trial_id", "epoch")}
    ref = save_checkpoint(store, trial.trial_id, 99, {**fields, "model": weights})
    row = measure_checkpoint(store, ref.path)
    assert row["status"] == "nonfinite" and row["epoch"] == 99
    assert all(row[k] is None for k in ("train_loss", "test_loss", "train_acc", "test_acc", "gen_gap", "fisher_rao"))
    store.delete_file(ref.path)


def test_write_row_keeps_one_row_per_checkpoint(trained):
    """A row lands at layout.result_path; the same checkpoint measured under other settings replaces it
    (the old file is deleted after the new one is written); another checkpoint's row is left alone."""
    trial, store, path = trained
    row = measure_checkpoint(store, path)
    first = write_row(store, row)
    assert first == result_path(store, trial.trial_id, 3, trial.measure_hash)
    other = write_row(store, {**row, "epoch": 1, "final": False})
    again = write_row(store, {**row, "measure_hash": "beef", "test_loss": 0.25})
    files = sorted((f.epoch, f.measure_hash) for f in row_files(store, trial.trial_id))
    assert files == [(1, trial.measure_hash), (3, "beef")] and other != again
    back = pl.read_parquet(store.read_bytes(again))
    assert back.schema == pl.Schema(SCHEMA) and back.height == 1
    assert back["test_loss"][0] == 0.25 and back["train_loss"][0] == pytest.approx(row["train_loss"])
    for f in row_files(store, trial.trial_id):
        store.delete_file(f.path)
