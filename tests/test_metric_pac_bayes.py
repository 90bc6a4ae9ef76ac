"""The pac_bayes metric end to end without Ray: a tiny trained checkpoint measured through the registry's
dispatch; its columns are the estimator's on the bounded loss the entry promises (0-1 error for a classifier,
MSE / target variance for regression), and its settings enter measure_hash only when a block lists it."""
import math

import pytest
import torch

from raystudy.checkpoints import list_checkpoints, load_checkpoint
from raystudy.geometry.pac_bayes import pac_bayes_flatness
from raystudy.measure import measure_checkpoint
from raystudy.metrics.pac_bayes import RelativeMSE, zero_one_error
from raystudy.seeding import derive_seed
from raystudy.study import expand, load_study
from raystudy.storage import Store
from raystudy.tasks.base import batches
from raystudy.train.loop import build_model, load_trial_task, train_trial
from support.studies import function_block, tiny_block, write_study_yaml

pytestmark = pytest.mark.usefixtures("one_thread")


def _study(tmp_path, **circ) -> dict:
    """The study's trials: a circles classifier and a sphere regression, each listing pac_bayes; ``circ``
    replaces fields of the circles block (None removes one)."""
    block = tiny_block(name="circ", model_args={"hidden": [16]}, lr=0.1, epochs=3, batch_size=None,
                       metrics=["pac_bayes"], pac_bayes={"draws": 8, "bound": 0.05}, measure={"max_samples": 128})
    block = {k: v for k, v in {**block, **circ}.items() if v is not None}
    fn = function_block(n_test=32, metrics=["sam_sharpness", "pac_bayes"], sharpness={"rhos": [0.01], "draws": 2},
                        pac_bayes={"draws": 8})
    return {t.block: t for t in expand(load_study(write_study_yaml(tmp_path, "pb", block, fn)))}


def _measured(trial, store):
    """The trial's final row and the (model, measured batches) it was measured on."""
    train_trial(trial, store)
    path = list_checkpoints(store, trial.trial_id)[-1].path
    row = measure_checkpoint(store, path)
    task = load_trial_task(trial)
    model = build_model(trial, task)
    model.load_state_dict(load_checkpoint(store, path)["model"])
    n = trial.measure.max_samples or len(task.x_train)
    x, y = task.x_train[:n], task.y_train[:n]
    data = [(task.normalise(a), b) for a, b in batches(x, y, trial.measure.batch_size)]
    return row, model.eval(), data, y


@pytest.mark.parametrize("block", ["circ", "fn"])
def test_pac_bayes_columns_are_the_estimators_on_the_bounded_loss(tmp_path, block):
    trial = _study(tmp_path)[block]
    row, model, data, y = _measured(trial, Store(str(tmp_path / "runs" / "pb")))
    assert row["status"] == "ok"
    loss = zero_one_error if block == "circ" else RelativeMSE(float(y.double().var()))
    cfg = trial.metric_settings["pac_bayes"]
    want = pac_bayes_flatness(model, loss, data, bound=cfg.bound, eps=cfg.eps, n_draws=cfg.draws,
                              seed=derive_seed("estimators", trial.seed))
    assert row["pac_bayes_sigma"] == pytest.approx(want.sigma, rel=1e-9) and row["pac_bayes_sigma"] > 0
    assert row["pac_bayes_flatness"] == pytest.approx(1 / want.sigma**2, rel=1e-9)
    assert row["pac_bayes_censored"] is want.censored
    if block == "fn":  # listed beside it, the other metric is measured as before
        assert row["sam_sharpness"] is not None and math.isfinite(row["sam_sharpness"])


def test_relative_mse_is_scale_free():
    # Targets and predictions times c: the same relative MSE, so the same sigma' for a model c times as large.
    out, target = torch.randn(50, 1, dtype=torch.float64), torch.randn(50, 1, dtype=torch.float64)
    var = float(target.var())
    assert float(RelativeMSE(var)(out, target)) == pytest.approx(
        float(RelativeMSE(100 * var)(10 * out, 10 * target)), rel=1e-12)
    assert float(zero_one_error(torch.tensor([[2.0, 1.0], [0.0, 1.0]]), torch.tensor([0, 0]))) == 0.5


def test_pac_bayes_settings_enter_the_hash_only_when_listed(tmp_path):
    listed = _study(tmp_path)
    other = _study(tmp_path, pac_bayes={"draws": 9})
    assert listed["circ"].measure_hash != other["circ"].measure_hash  # a changed setting re-measures
    unlisted = _study(tmp_path, metrics=["fisher_rao"], pac_bayes={"draws": 8})
    bare = _study(tmp_path, metrics=["fisher_rao"], pac_bayes=None)
    assert unlisted["circ"].metric_settings == {} and unlisted["circ"].measure_hash == bare["circ"].measure_hash
    assert listed["circ"].trial_id == unlisted["circ"].trial_id  # never a training setting
