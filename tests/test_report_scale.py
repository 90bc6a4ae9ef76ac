"""The report at scale, without drawing a page: the statistics' large-sample paths give the same bits as the
pairwise ones, and every chart draws a bounded number of points, saying so, however many rows the study has."""
from __future__ import annotations

import os
import signal
import time
from concurrent.futures import Future

import numpy as np
import polars as pl
import pytest

from support.fake_results import write_study
from raystudy.analysis import charts, charts_correlation, charts_hessian, correlation, inference
from raystudy.analysis.catalogue import report_charts
from raystudy.analysis.charts import panel_width, sample_points, thin
from raystudy.analysis.charts_correlation import complexity_chart, correlation_chart
from raystudy.analysis.charts_verdicts import verdict_charts
from raystudy.analysis.html import chart_spec
from raystudy.analysis.results import load_results


def test_tau_test_counted_by_sorting_matches_the_pairwise_sums(monkeypatch):
    rng = np.random.default_rng(3)
    x = np.tile(np.repeat(np.arange(9.0), 5), 2)  # 45 points a seed, x tied in fives as replicated targets are
    seeds = np.repeat([0, 1], 45)
    y = rng.normal(size=(2, 90))
    y[:, :6] = 0.0  # ties in y too
    y[1, ::4] = 1.0
    prefix_counts = inference.tau_test(x, y, seeds, n_perm=999)  # 9 distinct x: counts below each rank
    monkeypatch.setattr(inference, "FENWICK_FROM", 2)
    fenwick = inference.tau_test(x, y, seeds, n_perm=999)
    monkeypatch.setattr(inference, "SORTED_FROM", 10**9)
    pairwise = inference.tau_test(x, y, seeds, n_perm=999)
    for field in ("statistic", "p_greater", "p_less"):
        assert np.array_equal(getattr(prefix_counts, field), getattr(pairwise, field))
        assert np.array_equal(getattr(fenwick, field), getattr(pairwise, field))


class _Inline:
    """An executor that runs each task at once, in the caller's thread: tau_test's one-thread order."""

    def submit(self, fn, *args) -> Future:
        done = Future()
        done.set_result(fn(*args))
        return done


def test_tau_test_in_worker_threads_gives_the_one_thread_bits(monkeypatch):
    rng = np.random.default_rng(4)
    x = np.tile(np.repeat(np.arange(7.0), 3), 12)  # 12 seeds of 21 points: sorted counts, seeds in flight at once
    seeds, y = np.repeat(np.arange(12), 21), rng.normal(size=(3, 12 * 21))
    y[1, 5] = np.nan  # a missing value: its seed's sums by sign matrices
    threaded = inference.tau_test(x, y, seeds, n_perm=999, seed=7)
    monkeypatch.setattr(inference, "_pool", _Inline)
    inline = inference.tau_test(x, y, seeds, n_perm=999, seed=7)
    for field in ("statistic", "p_greater", "p_less"):
        assert np.array_equal(getattr(threaded, field), getattr(inline, field), equal_nan=True)


def test_tau_test_in_a_forked_child_starts_its_own_threads():
    # A fork copies the pool but none of its threads: without a fresh pool the child's first test waited forever.
    x, seeds = np.tile(np.arange(20.0), 3), np.repeat([0, 1, 2], 20)
    y = np.random.default_rng(0).normal(size=60)
    parent = inference.tau_test(x, y, seeds, n_perm=99)  # the parent's pool is running
    pid = os.fork()
    if pid == 0:  # the child: exit code 0 when it gets the parent's bits; killed below if it hangs
        os._exit(0 if np.array_equal(inference.tau_test(x, y, seeds, n_perm=99).p_greater, parent.p_greater) else 1)
    for _ in range(300):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("tau_test hung in a forked child")
    assert os.waitstatus_to_exitcode(status) == 0


def test_tau_b_of_many_points_is_scipys():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 20, size=800).astype(float), rng.normal(size=800)
    big = correlation.tau_b(x, y)  # above PAIRWISE_UP_TO: scipy's O(n log n) count
    i, j = np.triu_indices(800, k=1)
    sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    assert big == pytest.approx((sx * sy).sum() / np.sqrt((sx != 0).sum() * (sy != 0).sum()), abs=1e-12)


def test_thin_and_sample_bound_what_is_drawn():
    curve = pl.DataFrame({"line": ["a"] * 1000 + ["b"] * 10, "x": [*range(1000), *range(10)]})
    kept = thin(curve, "x", ["line"], most=50)
    a = kept.filter(pl.col("line") == "a")["x"]
    assert 45 <= a.len() <= 52 and a.min() == 0 and a.max() == 999  # the ends stay
    assert kept.filter(pl.col("line") == "b").height == 10  # short curves whole
    rows = pl.DataFrame({"v": range(10_000)})
    drawn, note = sample_points(rows, "points", limit=500)
    assert drawn.height == 500 and drawn["v"].is_sorted() and "500 of the 10,000 points" in note
    assert sample_points(rows.head(10))[1] == ""
    assert panel_width(1) == 260 and 3 * (panel_width(3) + 75) + 170 <= 1080


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> pl.DataFrame:
    """The fake study's rows 6 times over (new trial ids, 6 learning rates): ~750 rows."""
    rows = load_results(write_study(tmp_path_factory.mktemp("scale")))
    return pl.concat(rows.with_columns(trial_id=pl.col("trial_id") + f"-r{r}", seed=pl.col("seed") + 100 * (r // 10),
                                       lr=pl.col("lr") * (1 + (r % 10) / 100)) for r in range(6))


def test_every_chart_draws_a_bounded_number_of_points(many, monkeypatch):
    # The limits scaled down with the rows, so that a fast test meets them as a 100k-row study would.
    monkeypatch.setattr(charts, "MAX_MARKS", 150)
    monkeypatch.setattr(charts_correlation, "MAX_PANEL", 50)
    found = [(e.name, e.chart) for e in report_charts(many)]
    found += [(name, chart) for figures in verdict_charts(many).values() for name, chart, _ in figures]
    found += [("correlation_tau", correlation_chart(many)), ("sharpness_vs_complexity", complexity_chart(many))]
    sampled = set()
    for name, chart in found:
        spec = chart_spec(chart)
        records = [r for v in spec["datasets"].values() for r in v]
        curves = {(r.get("pid", r.get("block")), r.get("regime")) for r in records}
        if name in ("learning_curves", "hessian_spectral_density"):  # 150 points in all, 20 (+ the last) a curve
            assert len(records) <= max(150, 21 * len(curves)), name
        else:  # points: 150 at most (x 2 for the paired chart's means and the amplitude chart's two sides)
            assert len(records) <= 300 + 40, name
        if "random sample of" in spec.get("usermeta", {}).get("note", ""):
            sampled.add(name)
    # Every per-point chart with more points than the limit says it drew a sample.
    assert {"verdict_a_sharpness_vs_complexity", "verdict_c_paired_differences", "images_sharpness_vs_gap",
            "sharpness_vs_complexity"} <= sampled


def test_spectral_density_draws_a_spread_of_panels_and_says_so(many):
    every = charts_hessian.density_frame(many)["panel"].unique(maintain_order=True).to_list()
    assert len(every) > charts_hessian.MAX_PANELS  # 6 learning rates x 6 configurations
    spec = chart_spec(charts_hessian.spectral_density(many))
    titles = [panel["title"]["text"] for panel in spec["concat"]]
    assert len(titles) == charts_hessian.MAX_PANELS and titles[0] == every[0] and titles[-1] == every[-1]
    assert set(titles) <= set(every) and f"9 of the {len(every)} configurations" in spec["usermeta"]["note"]
    drawn = {r["pid"] for v in spec["datasets"].values() for r in v}
    assert drawn == set(range(len(titles)))  # no data of an undrawn panel on the page


def test_psi_groups_in_one_pass_are_tau_b_of_each_group():
    rng = np.random.default_rng(1)
    sizes = np.r_[rng.integers(1, 12, 40), correlation.PAIRWISE_UP_TO + 20]  # small groups and one for scipy
    group = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    x, y = rng.integers(0, 4, group.size).astype(float), rng.normal(size=group.size)
    y[::3] = 0.0  # ties on both sides
    got = correlation.grouped_tau_b(x, y, group, len(sizes))
    want = [correlation.tau_b(x[group == g], y[group == g]) for g in range(len(sizes))]
    assert np.array_equal(got, want, equal_nan=True)  # same bits, NaN where a group is constant or alone


def test_seed_taus_in_one_pass_are_tau_b_of_each_seed():
    rng = np.random.default_rng(5)
    n = 600
    rows = pl.DataFrame({"seed": rng.integers(0, 30, n), "x": rng.integers(0, 5, n).astype(float),
                         "y": rng.normal(size=n)}).with_columns(
        y=pl.when(pl.col("x") > 3).then(None).otherwise("y"),  # nulls dropped
        seed=pl.when(pl.int_range(pl.len()) < 4).then(None).otherwise("seed"))  # a null seed: its own group, first
    r = rows.drop_nulls(["x", "y"])
    want = [correlation.tau_b(g["x"].to_numpy(), g["y"].to_numpy())
            for _, g in r.sort("seed").group_by("seed", maintain_order=True)]
    assert np.array_equal(correlation.seed_taus(rows, "x", "y"), want, equal_nan=True)


def test_cached_sign_patterns_are_the_seeded_draws():
    d = np.random.default_rng(2).normal(size=(3, 20))  # 2^20 patterns: random ones, from default_rng(seed)
    first, again = inference.sign_flip_test(d, seed=5), inference.sign_flip_test(d, seed=5)
    flips = 1.0 - 2.0 * np.random.default_rng(5).integers(0, 2, size=(inference.N_PERM, 20))
    signed = np.sign(d) * inference.signed_ranks(d)
    observed, permuted = signed.sum(1), signed @ flips.T
    p_greater = ((permuted >= observed[:, None] - 1e-9).sum(1) + 1) / (inference.N_PERM + 1)
    assert np.array_equal(first.p_greater, p_greater) and np.array_equal(again.p_greater, p_greater)
    assert not inference._sign_patterns(20, inference.N_PERM, 5)[0].flags.writeable  # shared: read-only
