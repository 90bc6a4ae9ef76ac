"""The verdicts on rows whose answer is known by construction; the exact tests against hand-enumerated
permutation distributions; the declared settings; verdicts.json. Calibration under the null: test_calibration.py."""
import itertools
import json
import math

import numpy as np
import polars as pl
import pytest
from scipy import stats as sps

from raystudy.analysis.inference import median_interval, sign_flip_test, swap_test, tau_test
from raystudy.analysis.verdicts import decide, verdict_circles, verdict_functions, verdict_images, verdicts
from raystudy.study import Verdicts, VerdictGroup

SHAPE = {"sphere": 1.0, "booth": 3.0, "camel": 5.0, "himmelblau": 20.0, "rosenbrock": 80.0}


def _fn_rows(seeds, sign=1.0, unfit=(), scale=None, shape=SHAPE):
    """Family A rows: relative sharpness = shape^sign (x a seed factor), raw = relative x variance; the target
    variance grows with ``scale`` (target -> amplitude) when given, else is 100 for every target."""
    rows = []
    for (task, c), seed in itertools.product(shape.items(), seeds):
        variance = 100.0 * (scale[task] ** 2 if scale else 1.0)
        value = c ** sign * (1 + 0.1 * seed)
        rows.append(dict(family="functions", block="f", task=task, model="mlp", regime="base", seed=seed,
                         final=True, status="ok", target_complexity=c * variance, target_shape_complexity=c,
                         target_variance=variance, target_scale=scale[task] if scale else 1.0,
                         train_loss=(50.0 if (task, seed) in unfit or task in unfit else 0.1) * variance / 100,
                         hessian_lambda_max=value * variance,
                         sam_sharpness_by_rho=[dict(rho=5e-4, mean=value * variance),
                                               dict(rho=5e-2, mean=2 * value * variance)]))
    return pl.DataFrame(rows)


# --- the exact tests -------------------------------------------------------------------------------------

def test_tau_test_against_every_permutation_by_hand():
    """Two seeds of three points: 3! x 3! = 36 within-seed permutations, enumerated here independently."""
    x = np.array([1.0, 2, 3, 1, 2, 3])
    y = np.array([0.1, 0.3, 0.2, 1.0, 2.0, 3.0])
    seeds = np.array([0, 0, 0, 1, 1, 1])
    test = tau_test(x, y, seeds)
    taus = lambda xs: np.mean([sps.kendalltau(xs[i:i + 3], y[i:i + 3]).statistic for i in (0, 3)])  # noqa: E731
    observed = taus(x)
    null = [taus(np.concatenate([x[list(a)], x[3 + np.array(b)]]))
            for a, b in itertools.product(itertools.permutations(range(3)), repeat=2)]
    assert test.exact and test.n_perm == 36
    assert test.statistic[0] == pytest.approx(observed) == pytest.approx((1 / 3 + 1) / 2)
    assert test.p_greater[0] == pytest.approx(np.mean(np.array(null) >= observed - 1e-12))
    assert test.p_less[0] == pytest.approx(np.mean(np.array(null) <= observed + 1e-12))


def test_tau_test_monte_carlo_is_seeded_and_ties_are_kept():
    rng = np.random.default_rng(0)
    x = np.tile([1.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 4)  # a tie in x within every seed
    seeds = np.repeat(np.arange(4), 7)
    y = x + rng.normal(size=x.size)
    a, b = tau_test(x, y, seeds, seed=3), tau_test(x, y, seeds, seed=3)
    assert not a.exact and a.n_perm == 10_000 and a.p_greater[0] == b.p_greater[0]
    ref = np.mean([sps.kendalltau(x[seeds == s], y[seeds == s]).statistic for s in range(4)])
    assert a.statistic[0] == pytest.approx(ref)
    assert a.p_greater[0] < 0.01 and a.p_greater[0] >= 1 / 10_000
    const = tau_test(x, np.ones_like(x), seeds)  # y constant in every seed: tau undefined, never 0
    assert np.isnan(const.statistic[0]) and np.isnan(const.p_greater[0])


def test_sign_flip_with_ties_and_zeros_matches_enumeration():
    d = np.array([0.0, 1.0, -1.0, 2.0, 2.0, 3.0])
    ranks = sps.rankdata(np.abs(d[d != 0]))  # 1.5 1.5 3.5 3.5 5, the zero dropped
    observed = np.sum(np.sign(d[d != 0]) * ranks)
    null = [np.sum(np.array(s) * ranks) for s in itertools.product((-1, 1), repeat=5)]
    test = sign_flip_test(d)
    assert test.p_greater[0] == pytest.approx(np.mean(np.array(null) >= observed))
    assert test.statistic[0] == pytest.approx(observed / ranks.sum())


def test_swap_test_by_hand_and_the_smallest_p():
    """k = 2 seeds: models B0 B1 R0 R1. Swapping seed 0 compares (B0, R1) as regime pair and (R0, B1) as base
    pair; the four patterns are enumerated here by hand."""
    d = np.array([[0, 5, 1, 2], [5, 0, 3, 4], [1, 3, 0, 1], [2, 4, 1, 0]], dtype=float)
    b0, b1, r0, r1 = 0, 1, 2, 3
    null = [d[r0, r1] - d[b0, b1],  # identity
            d[b0, r1] - d[r0, b1],  # seed 0 swapped
            d[r0, b1] - d[b0, r1],  # seed 1 swapped
            d[b0, b1] - d[r0, r1]]  # both: the statistic negated
    test = swap_test(d)
    assert test.statistic[0] == pytest.approx(null[0]) == pytest.approx(-4)
    assert test.p_less[0] == pytest.approx(np.mean(np.array(null) <= null[0])) == pytest.approx(1 / 4)
    assert test.exact and test.n_perm == 4


def test_median_interval_needs_six_values_and_covers_by_the_binomial():
    assert median_interval(np.arange(5.0)) is None  # best possible coverage 1 - 2/32 < 0.95
    assert median_interval(np.arange(6.0)) == (0.0, 5.0)  # 1 - 2/64 = 0.969
    assert median_interval(np.arange(10.0)) == (1.0, 8.0)  # 1 - 2 * 11/1024 = 0.979; r = 3 gives 0.891


def test_decide_all_is_intersection_union_and_majority_uses_holm():
    p = np.array([[0.01, 0.04, 0.2], [0.01, 0.02, 0.03]])
    rev = np.ones_like(p)
    assert decide(p, rev, "all", 0.05).tolist() == [0, 1]
    # Holm on (0.01, 0.04, 0.2): 0.03, 0.08, 0.2 -> one of three; on (0.01, 0.02, 0.03): all 0.03 -> three.
    assert decide(p, rev, "majority", 0.05).tolist() == [0, 1]
    assert decide(np.array([0.9, 0.8]), np.array([0.01, 0.02]), "all", 0.05) == -1
    assert decide(np.array([0.9, 0.8]), np.array([0.01, 0.04]), "all", 0.05, alpha_reverse=0.025) == 0
    assert decide(np.array([np.nan, 0.01]), np.array([np.nan, 0.9]), "all", 0.05) == 0  # untestable never shown


# --- family A ---------------------------------------------------------------------------------------------

def test_functions_supported_contradicted_and_unfitted_targets_left_out_whole():
    v, = verdict_functions(_fn_rows(range(3)))
    assert v.outcome == "supported" and v.block == "f" and v.n_seeds == 3
    assert set(v.table["reading"]) == {"supported"} and v.table["tau"].to_list() == pytest.approx([1.0] * 3)
    assert set(v.table["metric"]) == {"SAM-sharpness rho=0.0005 / target variance",
                                      "SAM-sharpness rho=0.05 / target variance", "Hessian lambda_max / target variance"}
    assert verdict_functions(_fn_rows(range(3), sign=-1.0))[0].outcome == "contradicted"
    # Rosenbrock misses the fit on one seed only: it is left out with all its seeds, and the text says so.
    partly, = verdict_functions(_fn_rows(range(3), unfit=(("rosenbrock", 1),)))
    assert partly.outcome == "supported" and set(partly.table["n_points"]) == {12}  # 4 targets x 3 seeds
    assert "rosenbrock (worst seed relative train MSE 0.5 > fit_tolerance 0.05)" in partly.why
    assert partly.excluded == ("rosenbrock (worst seed relative train MSE 0.5 > fit_tolerance 0.05)",)
    # The tolerance is the study's: a looser one keeps it.
    loose, = verdict_functions(_fn_rows(range(3), unfit=(("rosenbrock", 1),)), Verdicts(fit_tolerance=0.6))
    assert not loose.excluded and set(loose.table["n_points"]) == {15}


def test_verdicts_do_not_depend_on_the_order_rows_were_written_in():
    """7 targets x 3 seeds: (7!)^3 permutations, so the p-values are Monte Carlo. The same rows in another
    order (files written in another order) give the same p-values, digit for digit."""
    shape = {f"t{i}": float(i + 1) for i in range(7)}
    df = _fn_rows(range(3), shape=shape)
    noise = np.exp(np.random.default_rng(0).normal(0.0, 2.0, df.height))
    df = df.with_columns(pl.format("f-{}-s{}", "task", "seed").alias("trial_id"),
                         hessian_lambda_max=pl.col("hessian_lambda_max") * noise)
    v, = verdict_functions(df)
    assert not v.table["p"].is_in([1.0 / (1 + 9999)]).all()  # not at the floor, where any order agrees
    for order in (1, 2):
        shuffled, = verdict_functions(df.sample(fraction=1.0, shuffle=True, seed=order))
        assert shuffled.table.equals(v.table) and shuffled.why == v.why


def test_functions_one_seed_of_three_targets_cannot_reach_significance():
    v, = verdict_functions(_fn_rows([0], shape={"a": 1.0, "b": 2.0, "c": 3.0}))
    assert v.outcome == "inconclusive" and "smallest attainable p" in v.why and "0.167" in v.why  # 1 / 3!


def test_functions_verdict_is_scale_free():
    """One function at amplitudes 1, 10, 100: raw complexity and raw sharpness rise together 10^4-fold, but the
    shape complexity is one value, so tau is undefined and the verdict inconclusive (the issue's control)."""
    rows = pl.concat([_fn_rows(range(3), shape={"sphere": 1.0}, scale={"sphere": a}).with_columns(
        target_scale=pl.lit(a), task=pl.lit("sphere")) for a in (1.0, 10.0, 100.0)])
    raw = sps.kendalltau(rows["target_complexity"], rows["hessian_lambda_max"]).statistic
    assert raw > 0.8  # the raw numbers would read "supported"
    v, = verdict_functions(rows)
    assert v.outcome == "inconclusive" and "1 distinct target shape complexity" in v.why
    # Shapes unrelated to sharpness, amplitudes that track raw complexity: raw tau is high, the verdict is not fooled.
    rng = np.random.default_rng(0)
    shape = dict(zip(SHAPE, rng.permutation(list(SHAPE.values()))))
    scale = dict(zip(SHAPE, [1.0, 3.0, 10.0, 30.0, 100.0]))
    rows = _fn_rows(range(3), shape=shape, scale=scale).with_columns(
        hessian_lambda_max=pl.col("target_variance") * (1 + 0.01 * pl.col("seed")), sam_sharpness_by_rho=None)
    assert sps.kendalltau(rows["target_complexity"], rows["hessian_lambda_max"]).statistic > 0.5
    v, = verdict_functions(rows)
    assert v.outcome == "inconclusive" and "tau undefined" in v.why  # relative sharpness constant per seed


# --- family B ---------------------------------------------------------------------------------------------

def _circle_rows(flip=1.0, noise=None, block="c"):
    rows = []
    for factor, seed in itertools.product((0.3, 0.6, 0.9), range(4)):
        rows.append(dict(family="circles", block=block, task="circles", model="mlp", regime="base", seed=seed,
                         final=True, status="ok", factor=factor, label_noise=noise,
                         test_acc=0.9 if (factor, seed) == (0.9, 3) else 1.0,
                         fisher_rao=flip * (factor * 10 + seed * 0.01)))
    return rows


def test_circles_reads_only_runs_at_full_test_accuracy_per_block_and_skips_random_labels():
    rows = pl.DataFrame(_circle_rows() + _circle_rows(flip=-1.0, block="d") + _circle_rows(noise=0.5, block="r"),
                        infer_schema_length=None)
    found = {v.block: v for v in verdict_circles(rows)}
    assert set(found) == {"c", "d"}  # the random-label block is another experiment
    assert found["c"].outcome == "supported" and "1 of 12 runs below 100%" in found["c"].why
    assert found["c"].table.row(0, named=True)["n_points"] == 11
    assert found["d"].outcome == "contradicted"
    assert "declared but not measured: sam_sharpness" in found["c"].why


# --- family C ---------------------------------------------------------------------------------------------

def _img_rows(n_seeds, sharper=1.0, safer=-1.0, block="d"):
    rows = []
    for seed, regime in itertools.product(range(n_seeds), ("base", "sam")):
        up = regime == "sam"
        rows.append(dict(family="images", block=block, task="digits", model="cnn", regime=regime, seed=seed,
                         final=True, status="ok", sam_rho=0.05 if up else None,
                         fisher_rao=10 + seed + (sharper * (1 + seed) if up else 0),
                         sam_sharpness=5 + seed + (sharper * (2 + seed) if up else 0),
                         ece=0.1 + 0.01 * seed + (safer * 0.01 * (1 + seed) if up else 0)))
    return pl.DataFrame(rows)


def test_images_per_regime_directions_with_enough_seeds():
    v, = verdict_images(_img_rows(6))
    assert v.outcome == "supported" and "sharper shown" in v.why and "safer shown" in v.why
    assert "ECE (15 bins, L1) lower (6 of 6 seeds" in v.why and "not measured corruption_acc, disagreement" in v.why
    assert set(v.table["metric"]) == {"fisher_rao", "sam_sharpness", "ece"}
    back, = verdict_images(_img_rows(6, sharper=-1.0, safer=1.0))
    assert back.outcome == "contradicted" and "shown the other way" in back.why and "against the claim" in back.why
    mixed, = verdict_images(_img_rows(6, safer=1.0))  # sharper, but less safe at p = 1/64 <= alpha / 2
    assert mixed.outcome == "contradicted"
    # Shown the other way needs alpha / 2: at 5 seeds the smallest p, 1/32, is above 0.025.
    five, = verdict_images(_img_rows(5, safer=1.0))
    assert five.outcome == "inconclusive" and "safer not shown" in five.why


@pytest.mark.parametrize("n, floor", [(2, "0.25"), (3, "0.125"), (4, "0.0625")])
def test_images_with_few_seeds_says_the_test_cannot_reach_significance(n, floor):
    v, = verdict_images(_img_rows(n))
    assert v.outcome == "inconclusive"
    assert f"not testable with {n} paired seeds: smallest attainable p {floor} > 0.05" in v.why


def test_images_declared_primary_metric_and_majority():
    rows = _img_rows(6).with_columns(fisher_rao=pl.col("fisher_rao") * (1 - 2 * (pl.col("regime") == "sam")))
    v, = verdict_images(rows)  # SAM-sharpness higher, Fisher-Rao lower: under "all" neither direction is shown
    assert v.outcome == "inconclusive" and "sharper not shown" in v.why and "Fisher-Rao norm lower" in v.why
    primary = Verdicts(sharpness=VerdictGroup(metrics=["sam_sharpness"]))
    assert verdict_images(rows, primary)[0].outcome == "supported"
    majority = Verdicts(sharpness=VerdictGroup(metrics=["sam_sharpness", "fisher_rao"], combine="majority"))
    assert verdict_images(rows, majority)[0].outcome == "inconclusive"  # one of two is no majority


def test_verdicts_per_family_and_block_and_json():
    df = pl.concat([_fn_rows(range(3)), _img_rows(3), _img_rows(6, block="e")], how="diagonal_relaxed")
    found = verdicts(df)
    assert [(v.family, v.block) for v in found] == [("A", "f"), ("C", "d"), ("C", "e")]
    assert verdicts(pl.DataFrame()) == []
    record = json.loads(json.dumps(found[1].to_dict()))
    assert {"family", "block", "claim", "outcome", "why", "n_seeds", "method", "statistics", "settings"} <= set(record)
    assert record["settings"]["alpha"] == 0.05 and record["settings"]["safety"]["combine"] == "all"
    stat = record["statistics"][0]
    assert {"metric", "p", "p_adj", "p_reverse", "mean_diff", "n_pairs"} <= set(stat)
    assert all(v is None or not isinstance(v, float) or math.isfinite(v) for s in record["statistics"]
               for v in s.values())
