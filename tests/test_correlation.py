"""Rank correlations of sharpness with generalisation, safety and function complexity: tau and Jiang et al.'s
granulated Psi on grids whose answer is known by hand, and the two charts."""
import itertools

import numpy as np
import polars as pl
import pytest
import vl_convert
from scipy import stats as sps

from raystudy.analysis.charts_correlation import complexity_chart, correlation_chart
from raystudy.analysis.correlation import (complexity_table, correlation_table, format_correlation_table,
                                           granulated_kendall, psi_axes, sharpness_columns, tau_b)
from raystudy.analysis.html import chart_spec
from support.fake_results import circle_rows, digit_rows, function_rows

BASE = dict(study="t", family="images", task="digits", model="cnn", regime="base", final=True, status="ok",
            lr=0.01, batch_size=64)


def _rows(records: list[dict]) -> pl.DataFrame:
    return pl.DataFrame([{**BASE, "block": "b", **r} for r in records], infer_schema_length=None)


def test_tau_is_the_median_within_seed_tau_with_a_distribution_free_interval():
    """Seven seeds of four trials; each seed's tau-b by scipy; the median of the seven, and the interval
    [2nd smallest, 2nd largest] (coverage 1 - 2 P(Bin(7, 1/2) <= 1) = 0.9375 < 0.95, so r = 1: [min, max])."""
    rng = np.random.default_rng(4)
    records = [dict(seed=s, lr=0.01 * (i + 1), fisher_rao=float(i + rng.normal()), gen_gap=float(i))
               for s in range(7) for i in range(4)]
    df = _rows(records)
    per_seed = [sps.kendalltau(g["fisher_rao"], g["gen_gap"]).statistic
                for _, g in df.sort("seed").group_by("seed", maintain_order=True)]
    row = correlation_table(df).row(0, named=True)
    assert row["tau"] == pytest.approx(np.median(per_seed))
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((min(per_seed), max(per_seed)))
    assert row["n_points"] == 28 and row["n_seeds"] == 7
    five = correlation_table(df.filter(pl.col("seed") < 5)).row(0, named=True)  # no 95% interval from 5 seeds
    assert five["tau"] == pytest.approx(np.median(per_seed[:5])) and five["ci_low"] is None and five["ci_high"] is None


def test_tau_b_of_the_psi_groups_equals_scipy_with_ties():
    rng = np.random.default_rng(1)
    for n in (2, 3, 4, 6, 12, 30):
        x, y = rng.integers(0, 3, n).astype(float), rng.integers(0, 4, n).astype(float)
        assert tau_b(x, y) == pytest.approx(sps.kendalltau(x, y).statistic, nan_ok=True)
    assert tau_b(np.array([1.0, 3, 2]), np.array([1.0, 2, 3])) == pytest.approx(1 / 3)  # 2 concordant, 1 not
    assert np.isnan(tau_b(np.array([5.0, 5, 5]), np.array([1.0, 2, 3])))


def test_psi_monotone_along_lr_anti_monotone_along_batch_size():
    """gap rises along both axes; the metric rises with lr but falls with batch size: psi_lr = +1, psi_bs = -1."""
    records = [dict(seed=s, lr=lr, batch_size=bs, gen_gap=i + 10 * j + 0.01 * s, fisher_rao=i - 10 * j + 0.02 * s)
               for s in range(3) for i, lr in enumerate((0.001, 0.01, 0.1)) for j, bs in enumerate((64, 256))]
    df = _rows(records)
    assert psi_axes(df) == ["lr", "batch_size"]
    psi, parts = granulated_kendall(df, "fisher_rao", "gen_gap")
    assert psi == pytest.approx(0.0)
    assert parts.to_dicts() == [{"axis": "lr", "psi": 1.0, "n_groups": 6, "n_skipped": 0},  # 2 bs x 3 seeds
                                {"axis": "batch_size", "psi": -1.0, "n_groups": 9, "n_skipped": 0}]  # 3 lr x 3
    row = correlation_table(df).row(0, named=True)
    assert row["psi"] == pytest.approx(0.0)
    within = [sps.kendalltau(g["fisher_rao"], g["gen_gap"]).statistic for _, g in df.group_by("seed")]
    assert row["tau"] == pytest.approx(np.median(within))


def test_psi_by_hand_with_skipped_groups():
    """One axis (lr); seed 0: metric 1 3 2 vs gap 1 2 3 -> tau 1/3; seed 1: tau 1; seed 2: metric constant (tau
    undefined, skipped); seed 3: a single trial (one lr value, skipped). psi = (1/3 + 1) / 2."""
    metric = {0: [1, 3, 2], 1: [1, 2, 3], 2: [5, 5, 5]}
    records = [dict(seed=s, lr=lr, fisher_rao=float(metric[s][i]), gen_gap=float(i + 1))
               for s in range(3) for i, lr in enumerate((0.001, 0.01, 0.1))]
    df = _rows(records + [dict(seed=3, lr=0.01, fisher_rao=1.0, gen_gap=2.0)])
    psi, parts = granulated_kendall(df, "fisher_rao", "gen_gap")
    assert psi == pytest.approx(2 / 3)
    assert parts.to_dicts() == [{"axis": "lr", "psi": pytest.approx(2 / 3), "n_groups": 2, "n_skipped": 2}]
    flat = df.with_columns(fisher_rao=pl.lit(5.0))
    psi, parts = granulated_kendall(flat, "fisher_rao", "gen_gap")
    assert psi is None and parts.row(0, named=True)["psi"] is None and parts.row(0, named=True)["n_groups"] == 0


def test_regime_is_an_axis_that_carries_the_hyperparameters_it_sets():
    """base / wd / sam (at two radii) x 2 lr x 3 seeds. Along the regime axis weight_decay and sam_rho move with
    the regime; weight_decay alone never varies with the regime held fixed, so it is not an axis; sam_rho is one
    (within sam). The metric follows the regime order, the gap its reverse."""
    order = {("base", None): 0, ("wd", None): 1, ("sam", 0.05): 2, ("sam", 0.5): 3}
    records = [dict(seed=s, lr=lr, regime=reg, sam_rho=rho, weight_decay=5e-4 if reg == "wd" else 0.0,
                    hessian_trace=k + 0.1 * s + lr, gen_gap=-k - 0.1 * s)
               for (reg, rho), k in order.items() for s in range(3) for lr in (0.01, 0.1)]
    df = _rows(records)
    assert set(psi_axes(df)) == {"lr", "weight_decay", "sam_rho", "regime"}
    psi, parts = granulated_kendall(df, "hessian_trace", "gen_gap")
    by_axis = {r["axis"]: r for r in parts.iter_rows(named=True)}
    assert set(by_axis) == {"lr", "sam_rho", "regime"}
    assert by_axis["regime"] == {"axis": "regime", "psi": -1.0, "n_groups": 6, "n_skipped": 0}  # 2 lr x 3 seeds
    assert by_axis["sam_rho"]["psi"] == -1.0 and by_axis["sam_rho"]["n_groups"] == 6  # sam only: 2 lr x 3 seeds
    assert by_axis["lr"]["psi"] is None and by_axis["lr"]["n_groups"] == 0  # the gap does not move with lr
    assert psi == pytest.approx(-1.0)


def test_sam_radii_adaptive_sharpness_and_targets_present():
    by_rho = [dict(rho=0.005, mean=1.0), dict(rho=0.05, mean=4.0)]
    adaptive = [dict(rho=0.1, kind="worst", norm="l2", value=2.0), dict(rho=0.1, kind="average", norm="linf",
                                                                       value=3.0)]
    records = [dict(seed=s, lr=lr, sam_sharpness=1.0, sam_sharpness_rho=0.005, sam_sharpness_by_rho=by_rho,
                    adaptive_sharpness_by=adaptive, gen_gap=float(s), ece=0.1) for s in range(3) for lr in (0.1, 1.0)]
    old = dict(seed=3, lr=0.1, sam_sharpness=7.0, sam_sharpness_rho=0.005, gen_gap=1.0)  # scalar only
    rows, metrics = sharpness_columns(_rows(records + [old]))
    assert metrics == [("SAM-sharpness rho=0.005", "_sam_0.005"), ("SAM-sharpness rho=0.05", "_sam_0.05"),
                       ("adaptive average-case sharpness (linf, rho=0.1)", "_adaptive_average_linf_0.1"),
                       ("adaptive worst-case sharpness (l2, rho=0.1)", "_adaptive_worst_l2_0.1")]
    assert rows["_sam_0.05"].to_list() == [4.0] * 6 + [None] and rows["_sam_0.005"][-1] == 7.0
    assert rows["_adaptive_average_linf_0.1"].to_list() == [3.0] * 6 + [None]
    table = correlation_table(_rows(records))
    assert table.height == 4 * 2 and set(table["target"]) == {"gen_gap", "ece"}  # test_acc etc. absent
    assert table["tau"].null_count() == table.height  # every metric constant: tau undefined, not 0


def test_fake_study_digits_regime_psi_and_formatted_table():
    """Family C fake rows: within a seed the sharper regime is the more accurate one, so the gap falls with
    sharpness along the regime axis (psi = -1); (sam, seed 1) lacks Fisher-Rao, (wd, seed 3) diverged."""
    df = pl.DataFrame(function_rows() + circle_rows() + digit_rows(), infer_schema_length=None)
    table = correlation_table(df)
    fr = table.filter((pl.col("block") == "digits") & (pl.col("column") == "fisher_rao")
                      & (pl.col("target") == "gen_gap")).row(0, named=True)
    assert fr["n_points"] == 10 and fr["psi"] == -1.0 and fr["psi_axes"][0]["axis"] == "regime"
    assert fr["psi_axes"][0]["n_groups"] == 4  # one per seed; seeds 1 and 3 have two of the three regimes
    text = format_correlation_table(table.filter(pl.col("block") == "digits"))
    assert text.columns == ["block", "metric", "n", "tau: generalisation gap", "tau: test accuracy",
                            "tau: ECE (15 bins, L1)", "Psi: generalisation gap", "psi: regime"]
    row = text.filter(pl.col("metric") == "Fisher-Rao norm").row(0, named=True)
    assert row["n"] == "10 / 4" and row["Psi: generalisation gap"] == "-1.00 (1 axis)"
    assert row["psi: regime"] == "-1.00 (4 groups)"
    assert row["tau: generalisation gap"] == f"{fr['tau']:.2f}"  # 4 seeds: no interval
    assert format_correlation_table(correlation_table(df.clear())).is_empty()


def _render(chart) -> dict:
    spec = chart_spec(chart)
    assert vl_convert.vegalite_to_svg(spec).startswith("<svg")
    assert '"tooltip"' in str(spec).replace("'", '"')
    return spec


def test_correlation_chart_renders_with_tooltips():
    df = pl.DataFrame(circle_rows() + digit_rows(), infer_schema_length=None)
    table = correlation_table(df)
    spec = _render(correlation_chart(df, table))
    values = spec["datasets"][next(iter(spec["datasets"]))]
    assert {"block", "metric", "target", "value", "interval", "n_points", "n_seeds"} <= set(values[0])
    assert correlation_chart(df.clear()) is None
    assert correlation_chart(pl.DataFrame(function_rows(), infer_schema_length=None)) is None  # no tau


def _complexity_rows() -> pl.DataFrame:
    rng = np.random.default_rng(0)
    records = []
    for family, block, seed, k in itertools.product(("functions", "circles"), ("x",), range(4), range(5)):
        c = float(k + 1 + 10 * (family == "circles"))
        records.append(dict(family=family, block=f"{family}-{block}", seed=seed, lr=0.01 * (k + 1),
                            trial_id=f"{family}-{seed}-{k}", input_grad_norm=c * (1 + 0.01 * seed),
                            target_complexity=c if family == "functions" else None,
                            hessian_lambda_max=c ** 2 + rng.uniform(0, 50), gen_gap=1.0))
    return _rows(records)


def test_complexity_table_is_per_block_and_chart():
    df = _complexity_rows()
    table = complexity_table(df)
    assert table.select("block", "measure", "n_points", "n_seeds").rows() == [
        ("functions-x", "input_grad_norm", 20, 4), ("functions-x", "target_complexity", 20, 4),
        ("circles-x", "input_grad_norm", 20, 4)]  # never pooled across families
    mine = df.filter(pl.col("block") == "circles-x")
    within = [sps.kendalltau(g["hessian_lambda_max"], g["input_grad_norm"]).statistic
              for _, g in mine.group_by("seed")]
    row = table.filter(pl.col("block") == "circles-x").row(0, named=True)
    assert row["tau"] == pytest.approx(np.median(within)) and row["family"] == "circles"
    assert row["ci_low"] is None  # 4 seeds: no 95% interval
    spec = _render(complexity_chart(df, table))
    assert "functions-x" in str(spec) and spec["hconcat"][0]["encoding"]["x"]["scale"]["type"] == "log"
    plain = df.drop("input_grad_norm", "target_complexity")
    assert complexity_table(plain).is_empty() and complexity_chart(plain) is None
