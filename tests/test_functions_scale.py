"""Family A's amplitude control: targets scaled by ``target_scale``, and a complexity that does not see
the scale (mean ||grad f||^2 / Var f), checked against hand computations on the grid."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from raystudy.tasks import FUNCTIONS, functions, load_task, target_complexity, target_shape_complexity

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models on a shared 2-core machine


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    axis = np.linspace(-3.5, 3.5, n)
    return np.meshgrid(axis, axis, indexing="ij")


def test_shape_complexity_of_sphere_matches_its_closed_form_on_the_grid():
    gx, gy = _grid(51)
    f = gx**2 + gy**2
    grad2 = 4 * (gx**2 + gy**2)  # |grad (x^2 + y^2)|^2
    expected = np.mean(grad2) / np.var(f)  # population variance over the grid nodes
    assert target_shape_complexity("sphere", n_grid=51) == pytest.approx(expected, rel=1e-12)


def test_shape_complexity_of_booth_by_hand():
    gx, gy = _grid(41)
    u, v = gx + 2 * gy - 7, 2 * gx + gy - 5
    expected = np.mean((2 * u + 4 * v) ** 2 + (4 * u + 2 * v) ** 2) / np.var(u**2 + v**2)
    assert target_shape_complexity("booth", n_grid=41) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("c, b", [(10.0, 0.0), (0.01, 0.0), (-3.0, 7.0), (2.5, -1e3)])
def test_shape_complexity_is_invariant_to_scale_and_offset_and_raw_complexity_scales_by_c_squared(monkeypatch, c, b):
    for name in ("rastrigin", "beale"):
        f = FUNCTIONS[name]
        monkeypatch.setitem(functions.FUNCTIONS, "copy", lambda p, f=f: c * f(p) + b)
        assert target_shape_complexity("copy", n_grid=61) == pytest.approx(
            target_shape_complexity(name, n_grid=61), rel=1e-10)
        assert target_complexity("copy", n_grid=61) == pytest.approx(c**2 * target_complexity(name, n_grid=61),
                                                                     rel=1e-10)


def test_rank_order_of_the_seven_targets_by_shape_complexity():
    """As measured on the default 201 x 201 grid (1 / input unit^2; raw complexity in brackets):
    booth 0.316 (3953) < himmelblau 0.923 (2941) < sphere 1.21 (33.0) < rosenbrock 2.17 (4.7e7)
    < beale 4.47 (3.8e7) < three_hump_camel 6.50 (1.0e4) < rastrigin 30.8 (4040).
    The raw order is different (sphere < himmelblau < booth < rastrigin < three_hump_camel < beale
    < rosenbrock): it mostly ranks amplitudes."""
    shape = {name: target_shape_complexity(name) for name in FUNCTIONS}
    assert sorted(shape, key=shape.get) == [
        "booth", "himmelblau", "sphere", "rosenbrock", "beale", "three_hump_camel", "rastrigin"]
    assert shape["sphere"] == pytest.approx(1.212, rel=1e-3) and shape["rastrigin"] == pytest.approx(30.76, rel=1e-3)
    raw = {name: target_complexity(name) for name in FUNCTIONS}
    assert sorted(raw, key=raw.get) != sorted(shape, key=shape.get)


def test_scaled_targets_are_the_scaled_function_at_the_same_points():
    for name in ("sphere", "rosenbrock"):
        one = load_task("functions", name, seed=5, n_train=300, n_test=200)
        ten = load_task("functions", name, seed=5, n_train=300, n_test=200, target_scale=10.0)
        assert torch.equal(one.x_train, ten.x_train) and torch.equal(one.x_test, ten.x_test)
        for x, y in ((ten.x_train, ten.y_train), (ten.x_test, ten.y_test)):
            # Scaled in float64, then rounded once to float32.
            assert torch.equal(y, (10.0 * FUNCTIONS[name](x.double())).float())
        # Against the unscaled targets: 10x up to float32 rounding (one ulp each side).
        assert torch.allclose(ten.y_train.double(), 10 * one.y_train.double(), rtol=2.5e-7, atol=0)
        assert ten.info["target_scale"] == 10.0 and one.info["target_scale"] == 1.0
        assert {k: v for k, v in ten.info.items() if k != "target_scale"} == \
            {k: v for k, v in one.info.items() if k != "target_scale"}
    sphere = load_task("functions", "sphere", seed=5, n_train=300, n_test=200, target_scale=10.0)
    by_hand = 10 * (sphere.x_train.double().numpy() ** 2).sum(1)  # 10 (x^2 + y^2)
    assert np.allclose(sphere.y_train[:, 0].numpy(), by_hand, rtol=1e-6, atol=0)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf")])
def test_load_refuses_a_scale_that_is_not_finite_and_positive(scale):
    with pytest.raises(ValueError, match="target_scale"):
        load_task("functions", "sphere", seed=0, n_train=10, n_test=10, target_scale=scale)


def test_rows_carry_the_scale_the_raw_and_the_scale_free_complexity(tmp_path):
    from raystudy.checkpoints import list_checkpoints
    from raystudy.measure import measure_checkpoint, write_row
    from raystudy.analysis.aggregate import varying_hyperparameters
    from raystudy.analysis.results import load_results
    from raystudy.study import expand, load_study
    from raystudy.storage import Store
    from raystudy.train.loop import build_model, load_trial_task, train_trial
    from support.studies import function_block, tiny_block, write_study_yaml

    fn = function_block(task="rastrigin", epochs=2, checkpoints=[0], target_scale=[1, 10],
                        sharpness={"rhos": [0.01], "draws": 3})
    circ = tiny_block(lr=0.1, batch_size=25, epochs=1, sharpness={"rhos": [0.01], "draws": 3})
    one, ten, circles = expand(load_study(write_study_yaml(tmp_path, "scale", fn, circ)))
    assert (one.target_scale, ten.target_scale) == (1.0, 10.0)
    assert load_trial_task(ten).info["target_scale"] == 10.0  # training sees the scaled target
    store = Store(str(tmp_path / "s"))
    rows = {}
    for t in (one, ten, circles):
        train_trial(t, store)
        for ckpt in list_checkpoints(store, t.trial_id):
            rows[t.target_scale if t is not circles else "c", ckpt.epoch] = row = measure_checkpoint(store, ckpt.path)
            write_row(store, row)
    r1, r10 = rows[1.0, 0], rows[10.0, 0]
    assert (r1["target_scale"], r10["target_scale"]) == (1.0, 10.0)
    assert r1["target_complexity"] == pytest.approx(target_complexity("rastrigin"), rel=1e-12)
    assert r10["target_complexity"] == pytest.approx(100 * r1["target_complexity"], rel=1e-12)
    assert r10["target_shape_complexity"] == r1["target_shape_complexity"] == target_shape_complexity("rastrigin")
    # Relative MSE by hand: both trials start from the same weights (initial weights ignore the scale), so at
    # epoch 0 one set of predictions g meets targets y and 10 y.
    task = load_task("functions", "rastrigin", seed=0, n_train=64, n_test=64)
    with torch.no_grad():
        g = build_model(one, task)(task.x_train).double()
    y = task.y_train.double()
    for scale, row in ((1.0, r1), (10.0, r10)):
        target = (scale * FUNCTIONS["rastrigin"](task.x_train.double())).float().double()
        assert row["target_variance"] == pytest.approx(float(target.var()), rel=1e-12)
        assert row["train_loss"] == pytest.approx(float(((g - target) ** 2).mean()), rel=1e-5)
        assert row["train_loss"] / row["target_variance"] == pytest.approx(
            float(((g - target) ** 2).mean() / target.var()), rel=1e-5)
    assert r10["target_variance"] == pytest.approx(100 * float(y.var()), rel=1e-6)
    # Training fitted the scaled targets too: far from them after two steps, its loss is ~100x.
    assert rows[10.0, 2]["train_loss_running"] > 50 * rows[1.0, 2]["train_loss_running"]
    c = rows["c", 1]
    assert c["target_scale"] is None and c["target_shape_complexity"] is None and c["target_complexity"] is None
    df = load_results(store.root)
    assert sorted(df["target_scale"].to_list(), key=str) == [1.0, 1.0, 10.0, 10.0, None]
    assert "target_scale" in varying_hyperparameters(df)


def test_rows_from_before_the_axis_read_as_scale_one(tmp_path):
    """Functions rows written without target_scale trained at scale 1: mixed with newer rows of the block,
    the scale must not look varying (null would count as a second value)."""
    import polars as pl

    from raystudy.analysis.aggregate import varying_hyperparameters
    from raystudy.analysis.results import load_results

    results = tmp_path / "results"
    results.mkdir()
    base = dict(block="fn", family="functions", task="sphere", trial_id="fn-a", step=1, final=True, status="ok")
    pl.DataFrame([base]).write_parquet(results / "old.parquet")  # no target_scale column at all
    pl.DataFrame([{**base, "trial_id": "fn-b", "target_scale": 1.0}]).write_parquet(results / "new.parquet")
    pl.DataFrame([{**base, "block": "c", "family": "circles", "trial_id": "c-a", "target_scale": None}],
                 schema_overrides={"target_scale": pl.Float64}).write_parquet(results / "circles.parquet")
    df = load_results(tmp_path).sort("trial_id")
    assert df["target_scale"].to_list() == [None, 1.0, 1.0]  # circles stays null: it has no target
    assert "target_scale" not in varying_hyperparameters(df)
