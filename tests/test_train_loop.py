"""The training loop and the measurement stage, without Ray."""
import math
import os
from dataclasses import replace

import polars as pl
import pytest
import torch

from raystudy.checkpoints import CheckpointError, list_checkpoints, load_checkpoint
from raystudy.measure import SCHEMA, measure_checkpoint, measured, write_row
from raystudy.measure.rows import row_files
from raystudy.study import expand, load_study
from raystudy.storage import Store
from raystudy.train.loop import build_model, load_trial_task, train_trial
from raystudy.trial import ResumeEvery
from support.studies import digits_block, function_block, tiny_block, write_study_yaml

@pytest.fixture
def trials(tmp_path):
    digits = digits_block(regime=["base", "aug+sam", "wd"], seed=[0, 1], epochs=3, checkpoints=[0, 1],
                          metrics=["sam_sharpness", "fisher_rao", "relative_flatness"],
                          sharpness={"rhos": [0.01, 0.1], "draws": 5}, measure={"max_samples": 200})
    fn = function_block(task=["sphere", "rastrigin"], epochs=4, checkpoints=[0], sharpness={"rhos": [0.01], "draws": 3})
    return expand(load_study(write_study_yaml(tmp_path, "loop", digits, fn)))


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_initial_weights_depend_only_on_task_model_seed(trials):
    digits = [t for t in trials if t.block == "digits"]
    task = load_trial_task(digits[0])
    by = {(t.regime, t.seed): _params(build_model(t, task)) for t in digits}
    assert torch.equal(by[("base", 0)], by[("aug+sam", 0)]) and torch.equal(by[("base", 0)], by[("wd", 0)])
    assert not torch.equal(by[("base", 0)], by[("base", 1)])
    sphere, rastrigin = [t for t in trials if t.block == "fn" and t.seed == 0]
    assert torch.equal(_params(build_model(sphere, load_trial_task(sphere))),
                       _params(build_model(rastrigin, load_trial_task(rastrigin))))


def test_resumed_trial_matches_uninterrupted(tmp_path, trials):
    trial = next(t for t in trials if t.regime == "aug+sam")  # SAM + augmentation: the most state
    full, cut = Store(str(tmp_path / "full")), Store(str(tmp_path / "cut"))
    reports = []
    train_trial(trial, full, report=reports.append)
    saved = [r for r in reports if "checkpoint" in r]  # the others are per-epoch progress reports
    assert [r["epoch"] for r in saved] == [0, 1, 3] and saved[-1]["final"]
    assert reports[0]["epoch"] == 0 and any("checkpoint" not in r for r in reports)
    train_trial(trial, cut)
    os.remove(list_checkpoints(cut, trial.trial_id)[-1].path)  # the crash lost the last epochs
    resumed = []
    summary = train_trial(trial, cut, report=resumed.append)
    assert summary.resumed_from == 1 and [r["epoch"] for r in resumed if "checkpoint" in r] == [3]
    full_curve = load_checkpoint(full, list_checkpoints(full, trial.trial_id)[-1].path)["train_loss_curve"]
    cut_curve = load_checkpoint(cut, list_checkpoints(cut, trial.trial_id)[-1].path)["train_loss_curve"]
    assert [e for e, _ in full_curve] == [1, 2, 3] and cut_curve == full_curve  # the curve survives a resume
    a = load_checkpoint(full, list_checkpoints(full, trial.trial_id)[-1].path)["model"]
    b = load_checkpoint(cut, list_checkpoints(cut, trial.trial_id)[-1].path)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


class Killed(Exception):
    """Stands in for the process dying mid-epoch."""


def test_resume_point_resumes_bit_identically(tmp_path, trials, monkeypatch):
    """A trial killed mid-epoch resumes from the later of its last measured checkpoint and its resume
    point, and ends with the uninterrupted run's weights, bit for bit."""
    import raystudy.train.loop as loop
    from raystudy.checkpoints import resume_path

    # Adam's moments and the epoch count are the state here; a resume point holds what a checkpoint
    # holds (one function writes both), and the test above covers SAM, augmentation and BatchNorm.
    fn = next(t for t in trials if t.block == "fn")
    trial = replace(fn, epochs=5, checkpoints=(0, 3, 5))
    full = Store(str(tmp_path / "full"))
    train_trial(replace(trial, resume_every=ResumeEvery(epochs=None, minutes=None)), full)
    want = load_checkpoint(full, list_checkpoints(full, trial.trial_id)[-1].path)
    real_epoch = loop.train_epoch
    # (resume_every, the epoch the kill lands in, where training must pick up again)
    cases = [({"epochs": 2, "minutes": None}, 5, 4),  # resume point (4) newer than the checkpoint (3)
             ({"epochs": 2, "minutes": None}, 4, 3),  # stale resume point (2): the checkpoint (3) wins
             ({"epochs": None, "minutes": 1e-9}, 3, 2)]  # by the clock: a resume point after every epoch
    for i, (every, crash_in, resumed_from) in enumerate(cases):
        store, t = Store(str(tmp_path / f"cut{i}")), replace(trial, resume_every=ResumeEvery(**every))
        calls = []

        def dies_in_epoch(step, batches):
            calls.append(1)
            if len(calls) == crash_in:
                raise Killed
            return real_epoch(step, batches)

        monkeypatch.setattr(loop, "train_epoch", dies_in_epoch)
        with pytest.raises(Killed):
            train_trial(t, store)
        monkeypatch.setattr(loop, "train_epoch", real_epoch)
        assert os.path.exists(resume_path(store, t.trial_id))
        assert [r.epoch for r in list_checkpoints(store, t.trial_id)] == [c for c in (0, 3) if c < crash_in]
        summary = train_trial(t, store)
        assert summary.resumed_from == resumed_from, every
        got = load_checkpoint(store, list_checkpoints(store, t.trial_id)[-1].path)
        assert got["resumed_from"] == resumed_from and got["train_loss_running"] == want["train_loss_running"]
        assert all(torch.equal(want["model"][k], got["model"][k]) for k in want["model"])
        assert not os.path.exists(resume_path(store, t.trial_id))  # superseded by the last checkpoint


def test_corrupt_resume_point_is_ignored_with_a_warning(tmp_path, trials):
    from raystudy.checkpoints import resume_path, resume_state

    store, trial = Store(str(tmp_path / "s")), next(t for t in trials if t.block == "fn")
    train_trial(trial, store)
    os.makedirs(os.path.dirname(resume_path(store, trial.trial_id)), exist_ok=True)
    with open(resume_path(store, trial.trial_id), "wb") as f:
        f.write(b"not a checkpoint")
    with pytest.warns(RuntimeWarning, match="ignoring the resume point: .*resume.pt: corrupt checkpoint"):
        state = resume_state(store, trial.trial_id)
    assert state["epoch"] == trial.epochs


def test_measure_row_is_honest(tmp_path, trials):
    store = Store(str(tmp_path / "s"))
    img = next(t for t in trials if t.regime == "wd")
    fn = next(t for t in trials if t.block == "fn")
    for t in (img, fn):
        train_trial(t, store)
    row = measure_checkpoint(store, list_checkpoints(store, img.trial_id)[-1].path)
    assert set(row) == set(SCHEMA)
    assert row["status"] == "ok" and row["bn_mode"] == "stored" and row["augmented"] is False
    assert row["measured_on"] == "train" and row["measure_n"] == 200 and row["final"]
    assert math.isclose(row["gen_gap"], 100 * (row["train_acc"] - row["test_acc"]))
    assert row["weight_decay"] == 5e-4 and row["sam_rho"] is None
    assert [r["rho"] for r in row["sam_sharpness_by_rho"]] == [0.01, 0.1]
    assert row["hessian_lambda_max"] is None  # not asked for: null, never 0
    assert row["sam_sharpness_precision"] in ("float32", "float64") and row["precision"] == "fp32"
    write_row(store, row)
    frow = measure_checkpoint(store, list_checkpoints(store, fn.trial_id)[0].path)
    assert frow["epoch"] == 0 and frow["train_acc"] is None and frow["ece"] is None and frow["fisher_rao"] is None
    assert math.isclose(frow["gen_gap"], frow["test_loss"] - frow["train_loss"])
    assert frow["target_complexity"] > 0
    write_row(store, frow)
    df = pl.read_parquet(f"{store.root}/results/**/*.parquet")
    assert df.height == 2 and df.schema == pl.Schema(SCHEMA)
    assert measured(row_files(store)) == {(img.trial_id, 3), (fn.trial_id, 0)}


def test_corrupt_checkpoint_names_the_file(tmp_path, trials):
    store = Store(str(tmp_path / "s"))
    train_trial(trials[0], store)
    ref = list_checkpoints(store, trials[0].trial_id)[-1]
    with open(ref.path, "r+b") as f:
        f.truncate(100)
    with pytest.raises(CheckpointError, match=rf"^{ref.path}: corrupt checkpoint"):
        measure_checkpoint(store, ref.path)


def test_adaptive_sharpness_and_complexity_columns(tmp_path):
    block = tiny_block(lr=0.1, metrics=["adaptive_sharpness", "complexity"], complexity={"lines": 5, "points": 65},
                       adaptive={"rho": [0.01, 0.1], "norm": ["l2", "linf"], "kind": ["worst", "average"], "n_iter": 5,
                                 "n_draws": 10})
    trial = expand(load_study(write_study_yaml(tmp_path, "more", block)))[0]
    store = Store(str(tmp_path / "s"))
    train_trial(trial, store)
    row = measure_checkpoint(store, list_checkpoints(store, trial.trial_id)[-1].path)
    entries = row["adaptive_sharpness_by"]
    assert len(entries) == 2 * 2 * 2 and {(e["kind"], e["norm"], e["rho"]) for e in entries} == {
        (k, n, r) for k in ("worst", "average") for n in ("l2", "linf") for r in (0.01, 0.1)}
    worst = {(e["norm"], e["rho"]): e["value"] for e in entries if e["kind"] == "worst"}
    assert all(v >= 0 for v in worst.values()) and worst[("l2", 0.1)] >= worst[("l2", 0.01)]
    assert row["input_grad_norm"] > 0 and row["linear_region_density"] >= 0 and row["linear_region_length"] > 0
    write_row(store, row)  # the struct list round-trips through the schema
    df = pl.read_parquet(f"{store.root}/results/**/*.parquet")
    assert df["adaptive_sharpness_by"].list.len().to_list() == [8]
    assert row["adaptive_sharpness"] == entries[0]["value"] and row["adaptive_sharpness_setting"].startswith("worst")
