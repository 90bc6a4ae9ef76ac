"""The three verdicts on rows whose answer is known by construction, and Kendall's tau by hand."""
import itertools

import numpy as np
import polars as pl
import pytest
from scipy import stats as sps

from raystudy.analysis.verdicts import (kendall_bootstrap, resampled_taus, verdict_circles, verdict_functions, verdict_images,
                                        verdicts)

COMPLEXITY = {"sphere": 1.0, "booth": 3.0, "camel": 5.0, "himmelblau": 20.0, "rosenbrock": 80.0}


def _fn_rows(seeds, sign=1.0, unfit=()):
    rows = []
    for (task, c), seed in itertools.product(COMPLEXITY.items(), seeds):
        value = c ** sign * (1 + 0.1 * seed)
        rows.append(dict(family="functions", block="f", task=task, model="mlp", regime="base", seed=seed,
                         final=True, status="ok", target_complexity=c, target_variance=100.0,
                         train_loss=50.0 if task in unfit else 0.1, hessian_lambda_max=value,
                         sam_sharpness_by_rho=[dict(rho=5e-4, mean=value), dict(rho=5e-2, mean=2 * value)]))
    return pl.DataFrame(rows)


def test_kendall_tau_by_hand_and_bootstrap_is_seeded():
    rows = pl.DataFrame({"seed": [0, 0, 0, 1, 1, 1], "x": [1, 2, 3, 1, 2, 3], "y": [1, 3, 2, 1, 2, 3]})
    # 15 pairs of 6 points; ties in x: (1,1),(2,2),(3,3) pairs -> tau-b. Concordant minus discordant by hand:
    x, y = rows["x"].to_numpy(), rows["y"].to_numpy()
    c = d = tx = ty = 0
    for i, j in itertools.combinations(range(6), 2):
        s = np.sign(x[i] - x[j]) * np.sign(y[i] - y[j])
        c, d = c + (s > 0), d + (s < 0)
        tx, ty = tx + (x[i] == x[j]), ty + (y[i] == y[j])
    n0 = 15
    expected = (c - d) / np.sqrt((n0 - tx) * (n0 - ty))
    tau, lo, hi = kendall_bootstrap(rows, "x", "y", n_boot=200, seed=3)
    assert tau == pytest.approx(expected)
    assert (tau, lo, hi) == kendall_bootstrap(rows, "x", "y", n_boot=200, seed=3)
    assert lo <= tau <= hi


def test_functions_supported_contradicted_and_unfitted_targets_left_out():
    v = verdict_functions(_fn_rows(range(4)))
    assert v.outcome == "supported" and set(v.table["reading"]) == {"supported"}
    assert set(v.table["metric"]) == {"SAM-sharpness rho=0.0005", "SAM-sharpness rho=0.05", "Hessian lambda_max"}
    # Pooled over seeds: tau-b of 20 points, ties in complexity across seeds, concordant otherwise.
    pooled = _fn_rows(range(4))
    ref = float(sps.kendalltau(pooled["target_complexity"], pooled["hessian_lambda_max"]).statistic)
    assert 0.9 < ref < 1 and v.table["tau"].to_list() == pytest.approx([ref] * 3)
    assert verdict_functions(_fn_rows(range(4), sign=-1.0)).outcome == "contradicted"
    partly = verdict_functions(_fn_rows(range(4), unfit=("rosenbrock",)))
    assert partly.outcome == "supported" and "rosenbrock (worst seed 0.5)" in partly.why
    assert set(partly.table["n_points"]) == {16}  # 4 fitted functions x 4 seeds
    few = verdict_functions(_fn_rows(range(2)))
    assert few.outcome == "inconclusive" and "at least 3" in few.why


def test_circles_reads_only_runs_at_full_test_accuracy():
    rows = []
    for factor, seed in itertools.product((0.3, 0.6, 0.9), range(4)):
        rows.append(dict(family="circles", block="c", task="circles", model="mlp", regime="base", seed=seed,
                         final=True, status="ok", factor=factor, label_noise=None,
                         test_acc=0.9 if (factor, seed) == (0.9, 3) else 1.0, fisher_rao=factor * 10 + seed * 0.01))
    v = verdict_circles(pl.DataFrame(rows))
    assert v.outcome == "supported" and "1 of 12 runs below 100%" in v.why
    assert v.table.row(0, named=True)["n_points"] == 11
    flipped = pl.DataFrame(rows).with_columns(fisher_rao=-pl.col("fisher_rao"))
    assert verdict_circles(flipped).outcome == "contradicted"


def _img_rows(n_seeds, sharper=1.0, safer=-1.0):
    rows = []
    for seed, regime in itertools.product(range(n_seeds), ("base", "sam")):
        up = regime == "sam"
        rows.append(dict(family="images", block="d", task="digits", model="cnn", regime=regime, seed=seed,
                         final=True, status="ok", sam_rho=0.05 if up else None,
                         fisher_rao=10 + seed + (sharper * (1 + seed) if up else 0),
                         sam_sharpness=5 + seed + (sharper * (2 + seed) if up else 0),
                         ece=0.1 + 0.01 * seed + (safer * 0.01 * (1 + seed) if up else 0)))
    return pl.DataFrame(rows)


def test_images_per_regime_directions_with_enough_seeds():
    v = verdict_images(_img_rows(8))
    assert v.outcome == "supported" and "sharper shown" in v.why and "safer shown" in v.why
    assert set(v.table["metric"]) == {"fisher_rao", "sam_sharpness", "ece"}
    back = verdict_images(_img_rows(8, sharper=-1.0, safer=1.0))
    assert back.outcome == "contradicted" and "shown the other way" in back.why
    mixed = verdict_images(_img_rows(8, safer=1.0))
    assert mixed.outcome == "inconclusive"


def test_images_with_two_seeds_says_the_test_cannot_reach_significance():
    v = verdict_images(_img_rows(2))
    assert v.outcome == "inconclusive" and "not testable with 2 paired seeds" in v.why


def test_verdicts_lists_only_families_present():
    assert [v.family for v in verdicts(pl.concat([_fn_rows(range(3)), _img_rows(3)], how="diagonal_relaxed"))] \
        == ["A", "C"]
    assert verdicts(pl.DataFrame()) == []


def test_bootstrap_taus_equal_scipy_on_each_resample():
    """Each resample's tau from the per-seed-pair tables is scipy's tau-b of the resampled rows, ties included."""
    rng = np.random.default_rng(1)
    rows = pl.DataFrame({"seed": np.repeat([3, 5, 8, 9], 6), "x": rng.integers(0, 4, 24).astype(float),
                         "y": rng.normal(size=24).round(1)})
    draws = ([3, 3, 5, 9], [8, 8, 8, 8], [3, 5, 8, 9], [9, 5, 5, 3])
    counts = np.array([[d.count(s) for s in (3, 5, 8, 9)] for d in draws])
    fast = resampled_taus(rows, "x", "y", counts)
    for drawn, tau in zip(draws, fast):
        resample = pl.concat([rows.filter(pl.col("seed") == s) for s in drawn])
        assert tau == pytest.approx(sps.kendalltau(resample["x"], resample["y"]).statistic)
