"""Analysis stage: loading result rows, mean/SEM tables, paired tests against base, and charts."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import vl_convert
from scipy import stats as sps

from support.fake_results import write_study
from raystudy.analysis import charts, charts_hessian, radii, results
from raystudy.analysis.aggregate import format_mean_sem, format_summary, summary_table, varying_hyperparameters
from raystudy.analysis.html import chart_spec
from raystudy.analysis.labels import axis_title, measurement_note, sam_rhos
from raystudy.analysis.results import NotAStudyError, final_rows, load_results
from raystudy.analysis.inference import sign_flip_test
from raystudy.analysis.stats import compare_to_base


@pytest.fixture(scope="module")
def df(tmp_path_factory) -> pl.DataFrame:
    return load_results(write_study(tmp_path_factory.mktemp("study")))


def _one(frame: pl.DataFrame, **where) -> dict:
    rows = frame.filter(*(pl.col(k).eq_missing(v) for k, v in where.items()))
    assert rows.height == 1, where
    return rows.row(0, named=True)


# --- loading ---------------------------------------------------------------------------------------------

def test_load_results_stacks_schemas_and_keeps_last_measurement(df):
    assert df.height == 70 + 30 + 24  # functions + circles + digits; the re-measured row is not duplicated
    assert df.select("trial_id", "step").is_duplicated().sum() == 0
    row = _one(df, block="digits", regime="base", seed=0, final=True)
    assert row["ece"] == pytest.approx(0.05)  # the later file wins
    fn = _one(df, task="rastrigin", seed=0, step=1000)
    assert fn["ray_version"] is None and fn["hessian_trace"] is None and fn["batch_size"] is None
    diverged = _one(df, regime="wd", seed=3, final=True)
    assert diverged["status"] == "nonfinite" and diverged["train_loss"] is None  # NaN became null
    assert final_rows(df).height == 14 + 15 + 12


def test_polars_reader_and_pyarrow_reader_agree(df, tmp_path, monkeypatch):
    # One schema in every file (as one raystudy version writes them): polars' multi-file reader; the pyarrow reader
    # (mixed versions, object storage) must give the same frame, rows in file order.
    for (trial,), part in df.group_by("trial_id", maintain_order=True):
        (tmp_path / "results" / trial).mkdir(parents=True)
        part.write_parquet(tmp_path / "results" / trial / "epoch_000001.parquet")
    store = results.Store(tmp_path)
    paths = results.result_files(store)
    fast = results._read_rows(store, paths)
    assert fast.equals(pl.from_arrow(results._read_arrow(store, paths)))
    assert fast.height == df.height and fast.n_chunks() <= -(-len(paths) // results.POLARS_BATCH)
    monkeypatch.setattr(results, "_read_arrow", None)  # the local, one-schema study never needs it
    assert load_results(tmp_path).equals(load_results(store))


def test_sam_radii_defined_once(df):
    rows = pl.DataFrame({"sam_sharpness_by_rho": [[{"rho": 0.05, "mean": 2.0}, {"rho": 0.005, "mean": 1.0}],
                                                  None, [{"rho": 0.005, "mean": 3.0}]]})
    assert radii.sam_radii(rows) == [0.005, 0.05] and radii.sam_radii(rows.head(0)) == []
    wide = radii.with_rho_columns(rows)
    assert radii.radius_columns(wide) == ["_sam_0.005", "_sam_0.05"]
    assert wide["_sam_0.005"].to_list() == [1.0, None, 3.0] and wide["_sam_0.05"].to_list() == [2.0, None, None]
    assert radii.column_radius("_sam_0.05") == 0.05 and radii.radius_label("_sam_0.05") == "SAM-sharpness rho=0.05"
    assert radii.sam_long(rows.with_row_index("i"), ["i"]).rows() == [(0, 0.05, 2.0), (0, 0.005, 1.0), (2, 0.005, 3.0)]
    # No other analysis module reads the column itself: the radii have one definition.
    readers = [p.name for p in Path(radii.__file__).parent.glob("*.py")
               if p.name != "radii.py" and '"sam_sharpness_by_rho"' in p.read_text()]
    assert readers == []


def test_load_results_empty_and_not_a_study(tmp_path):
    (tmp_path / "results").mkdir()
    assert load_results(tmp_path).is_empty()
    with pytest.raises(NotAStudyError, match="no results/ directory"):
        load_results(tmp_path / "nope")


# --- mean (SEM) ------------------------------------------------------------------------------------------

def test_summary_mean_and_sem_by_hand(df):
    assert varying_hyperparameters(df) == ["weight_decay", "sam_rho", "factor", "label_noise"]
    table = summary_table(df).filter(pl.col("block") == "digits")
    base = _one(table, regime="base")
    assert base["n_seeds"] == 4 and base["test_acc_mean"] == pytest.approx(93.0)
    assert base["test_acc_sem"] == pytest.approx(math.sqrt((9 + 1 + 1 + 9) / 3) / 2)
    wd = _one(table, regime="wd")  # seed 3 diverged: left out of the means, counted apart
    assert (wd["n_seeds"], wd["n_nonfinite"]) == (3, 1)
    assert wd["test_acc_mean"] == pytest.approx(92.5) and wd["test_acc_sem"] == pytest.approx(2 / math.sqrt(3))
    fr = [4.0, 4.8, 5.2]  # sam, seeds 0, 2, 3 (seed 1 has no Fisher-Rao value)
    m = sum(fr) / 3
    sam = _one(table, regime="sam")
    assert sam["fisher_rao_mean"] == pytest.approx(m)
    assert sam["fisher_rao_sem"] == pytest.approx(math.sqrt(sum((v - m) ** 2 for v in fr) / 2) / math.sqrt(3))
    circles = summary_table(df).filter(pl.col("block") == "circles")
    assert circles["factor"].to_list() == [0.3, 0.6, 0.9]


def test_a_seed_counts_once_in_mean_and_sem():
    """Two final trials of seed 0 in one configuration (a setting outside the hyperparameter columns) are one
    seed: averaged first (90 and 92 -> 91), then mean and SEM over the seeds' values 91, 95, 96."""
    rows = pl.DataFrame({"block": ["b"] * 4, "task": ["t"] * 4, "model": ["m"] * 4, "regime": ["base"] * 4,
                         "seed": [0, 0, 1, 2], "status": ["ok"] * 4, "final": [True] * 4,
                         "trial_id": ["a", "b", "c", "d"], "test_acc": [90.0, 92.0, 95.0, 96.0]})
    row = summary_table(rows).row(0, named=True)
    assert (row["n_seeds"], row["test_acc_mean"]) == (3, pytest.approx(94.0))
    assert row["test_acc_sem"] == pytest.approx(math.sqrt((9 + 1 + 4) / 2) / math.sqrt(3))


def test_sem_is_null_for_one_seed_and_formatting():
    one = pl.DataFrame({"block": ["b"], "task": ["t"], "model": ["m"], "regime": ["base"], "seed": [0],
                        "status": ["ok"], "final": [True], "test_acc": [91.0]})
    row = summary_table(one).row(0, named=True)
    assert row["test_acc_mean"] == 91.0 and row["test_acc_sem"] is None
    assert format_summary(summary_table(one))["test_acc"].to_list() == ["91"]
    assert format_mean_sem(93.0, 1.2909944) == "93 (1.3)"
    assert format_mean_sem(None, None) == "-"


# --- paired tests ----------------------------------------------------------------------------------------

def test_exact_wilcoxon_by_hand():
    d = np.array([1, 2, -3, 4, 5])
    test = sign_flip_test(d)
    assert test.statistic[0] == pytest.approx((12 - 3) / 15)  # rank-biserial (R+ - R-) / (R+ + R-)
    # exact null: P(R+ >= 12) = #{subsets of ranks 1..5 with sum <= 3} / 2^5 = 5/32
    assert test.p_greater[0] == pytest.approx(5 / 32) and test.p_less[0] == pytest.approx(29 / 32)
    assert test.exact and test.n_perm == 32
    assert sign_flip_test(np.array([1, 1, -2])).statistic[0] == pytest.approx(0.0)  # ranks 1.5, 1.5 vs 3


def test_exact_wilcoxon_matches_scipy_exact_without_ties():
    rng = np.random.default_rng(0)
    base, other = rng.normal(size=9), rng.normal(0.5, 1.0, size=9)
    ref = sps.wilcoxon(other, base, alternative="greater", method="exact")
    assert sign_flip_test(other - base).p_greater[0] == pytest.approx(ref.pvalue)


def _pairs(diffs: dict[str, list[float]], lr: float = 0.01, extra_seed: bool = True) -> pl.DataFrame:
    """Base and sam rows at the final checkpoint with sam - base = diffs[metric][seed]."""
    n = len(next(iter(diffs.values())))
    rows = []
    for seed in range(n + extra_seed):
        for regime in ("base", "sam") if seed < n else ("sam",):  # the extra seed has no base partner
            rows.append({"block": "c", "task": "digits", "model": "cnn", "regime": regime, "seed": seed,
                         "lr": lr, "sam_rho": 0.05 if regime == "sam" else None, "status": "ok", "final": True,
                         **{m: 10.0 + seed + (d[seed] if regime == "sam" and seed < n else 0.0)
                            for m, d in diffs.items()}})
    return pl.DataFrame(rows)


def test_compare_to_base_p_effect_and_by_correction():
    frame = _pairs({"sam_sharpness": [1, 2, -3, 4, 5], "fisher_rao": [1, 2, 3, 4, 5],
                    "gen_gap": [-1, -2, -3, -4, 5], "ece": [-0.1, -0.2, -0.3, -0.4, -0.5]})
    out = compare_to_base(frame)
    assert set(out["n_pairs"]) == {5} and set(out["regime"]) == {"sam"}
    sam = _one(out, metric="sam_sharpness")
    # R+ = 12 of 15: P(R+ >= 12) = 5/32 by hand (sign patterns of ranks 1..5 with positive sum >= 12).
    assert (sam["p"], sam["effect"]) == (pytest.approx(5 / 32), pytest.approx(0.6))
    assert sam["p_reverse"] == pytest.approx(29 / 32) and sam["method"].startswith("exact Wilcoxon")
    # Benjamini-Yekutieli over the two sharpness tests: m = 2, c(m) = 1 + 1/2; p_(i) * m * c(m) / i
    assert sam["p_adj"] == pytest.approx(5 / 32 * 2 * 1.5 / 2)
    assert _one(out, metric="fisher_rao")["p_adj"] == pytest.approx(1 / 32 * 2 * 1.5)
    gap = _one(out, metric="gen_gap")  # "less": P(R+ <= 5) = 10/32; uncorrected
    assert gap["alternative"] == "less" and gap["p"] == pytest.approx(10 / 32) and gap["p_adj"] == gap["p"]
    assert gap["correction"] == "none"
    ece = _one(out, metric="ece")  # alone in the safety group: BY with m = 1 leaves p unchanged
    assert ece["p"] == pytest.approx(1 / 32) and ece["p_adj"] == pytest.approx(1 / 32) and ece["effect"] == -1.0


def test_compare_to_base_pairs_within_hyperparameters_and_handles_zero_differences():
    frame = pl.concat([_pairs({"test_acc": [1, 2, 3, 4, 5]}, lr=0.01),
                       _pairs({"test_acc": [0.0, 0.0, 1.0]}, lr=0.1, extra_seed=False),
                       _pairs({"test_acc": [0.0, 0.0]}, lr=1.0, extra_seed=False)])
    out = compare_to_base(frame)
    assert out.sort("lr")["n_pairs"].to_list() == [5, 3, 2]
    assert _one(out, lr=0.01)["p"] == pytest.approx(1 / 32)
    one = _one(out, lr=0.1)  # zero differences carry no rank: one non-zero difference, exact p = 1/2
    assert one["p"] == pytest.approx(0.5) and one["effect"] == 1.0
    none = _one(out, lr=1.0)  # nothing differs: nothing to test, null rather than a p of 1
    assert none["p"] is None and none["effect"] is None


def test_digits_study_comparisons(df):
    out = compare_to_base(df)
    assert set(out["block"]) == {"digits"} and set(out["regime"]) == {"sam", "wd"}
    assert _one(out, regime="wd", metric="test_acc")["n_pairs"] == 3  # the diverged seed is not paired
    assert _one(out, regime="sam", metric="fisher_rao")["n_pairs"] == 3  # seed 1 has no value


# --- labels and charts -----------------------------------------------------------------------------------

def test_labels_say_what_was_measured(df):
    digits = final_rows(df).filter(pl.col("block") == "digits")
    assert measurement_note(df) == "eval mode (BN stats stored), train set, un-augmented, n=500"
    assert sam_rhos(df.filter(pl.col("family") == "functions")) == [0.005]
    assert axis_title(df.filter(pl.col("family") == "functions"), "sam_sharpness") == "SAM-sharpness (rho=0.005)"
    assert axis_title(digits, "gen_gap").endswith("pp)") and axis_title(digits, "test_acc").endswith("(%)")
    assert "MSE" in axis_title(df.filter(pl.col("family") == "functions"), "gen_gap")


def test_density_average_on_a_common_grid(df):
    frame = charts_hessian.density_frame(df).filter(pl.col("panel") == "digits / digits / cnn")
    assert set(frame["regime"]) == {"base", "sam", "wd"} and set(frame["n_trials"]) == {4, 4, 3}
    base = frame.filter(pl.col("regime") == "base")
    rows = final_rows(df).filter((pl.col("block") == "digits") & (pl.col("regime") == "base"))
    expected = np.mean([np.asarray(d) for d in rows["hessian_density"]], axis=0)
    grid = np.asarray(rows["hessian_density_grid"][0])
    assert base.height == 80  # the panel's grid spans the wider grid of sam
    inside = base.filter(pl.col("eigenvalue") <= 10.0)
    np.testing.assert_allclose(inside["density"],
                               np.maximum(np.interp(inside["eigenvalue"], grid, expected), 1e-8), rtol=1e-6)
    assert np.trapezoid(base["density"], base["eigenvalue"]) == pytest.approx(1.0, abs=0.02)
    assert base.filter(pl.col("eigenvalue") > 10.0)["density"].min() == 1e-8  # zero outside, floored


def test_on_grid_interpolates_and_is_zero_outside():
    grid = charts_hessian.common_grid([np.linspace(0, 1, 3), np.linspace(0, 2, 5)])
    np.testing.assert_allclose(grid, np.linspace(0, 2, 5))
    np.testing.assert_allclose(charts_hessian.on_grid(grid, np.array([1.0, 0.0]), np.array([2.0, 0.0])),
                               [0.0, 1.0, 2.0, 0.0, 0.0])


CHARTS = {
    "functions_vs_step": lambda d: charts.functions_sharpness_vs_step(d),
    "functions_complexity": lambda d: charts.functions_complexity_vs_sharpness(d),
    "circles_factor": lambda d: charts.circles_sweep(d, "factor"),
    "circles_noise": lambda d: charts.circles_sweep(d, "label_noise"),
    "images_gap": lambda d: charts.images_vs_gap(d),
    "curvature_gap": charts_hessian.curvature_vs_gap,
    "density": charts_hessian.spectral_density,
}


@pytest.mark.parametrize("name", CHARTS)
def test_every_chart_renders(df, name):
    svg = vl_convert.vegalite_to_svg(chart_spec(CHARTS[name](df)))
    assert svg.startswith("<svg") and "geometry measured with eval mode (BN stats stored)" in svg


def test_chart_data_and_absent_data(df):
    spec = chart_spec(charts.functions_complexity_vs_sharpness(df))
    values = spec["datasets"][next(iter(spec["datasets"]))]
    assert len(values) == 7 * 2 * 4  # function x seed x rho
    digits = df.filter(pl.col("family") == "images")
    assert charts.functions_sharpness_vs_step(digits) is None
    assert charts.circles_sweep(digits) is None
    assert charts_hessian.spectral_density(df.filter(pl.col("family") == "functions")) is None
    assert charts.circles_sweep(df.filter(pl.col("block") == "circles"), "label_noise") is None
    assert charts.images_vs_gap(df.clear()) is None


def test_by_correction_families_are_one_regime_and_one_group():
    """Two regimes, sharpness and Hessian metrics: BY runs per (regime vs base) x group, never across them."""
    sam = _pairs({"sam_sharpness": [1, 2, 3, 4, 5], "fisher_rao": [1, 2, -3, 4, 5],
                  "hessian_trace": [1, 2, 3, 4, 5], "hessian_lambda_max": [1, -2, 3, 4, 5]})
    wd = sam.filter(pl.col("regime") == "sam").with_columns(regime=pl.lit("wd"), sam_rho=pl.lit(None, pl.Float64),
                                                            fisher_rao=pl.col("fisher_rao") * 0 + 10 + pl.col("seed"))
    out = compare_to_base(pl.concat([sam, wd]))
    by = lambda ps: sps.false_discovery_control(ps, method="by")  # noqa: E731
    for regime in ("sam", "wd"):
        mine = out.filter(pl.col("regime") == regime)
        assert set(mine["group"]) <= {"sharpness", "hessian"}
        for group in ("sharpness", "hessian"):
            fam = mine.filter((pl.col("group") == group) & pl.col("p").is_not_null())
            assert fam["p_adj"].to_list() == pytest.approx(by(fam["p"].to_numpy()).tolist())
    assert set(out.filter(pl.col("metric").str.starts_with("hessian"))["group"]) == {"hessian"}
    # wd's fisher_rao has no difference (not tested): its sharpness family holds sam_sharpness alone.
    wd_sharp = _one(out, regime="wd", metric="sam_sharpness")
    assert wd_sharp["p_adj"] == pytest.approx(wd_sharp["p"])


def test_learning_curves_average_seeds_per_epoch():
    rows = [dict(block="b", family="circles", task="circles", model="mlp", regime=r, seed=s, trial_id=f"{r}{s}",
                 final=True, status="ok", train_loss_curve=[dict(epoch=e, loss=(s + 1.0) / e + (r == "sam"))
                                                            for e in (1, 2, 4)])
            for r in ("base", "sam") for s in (0, 1)]
    chart = charts.learning_curves(pl.DataFrame(rows))
    spec = chart.to_dict()
    data = pl.DataFrame(next(iter(spec["datasets"].values()))).sort("regime", "epoch")
    # mean over seeds 0 and 1 of (s + 1) / e, plus 1 under sam
    assert data["loss"].to_list() == pytest.approx([1.5, 0.75, 0.375, 2.5, 1.75, 1.375])
    assert set(data["n_seeds"]) == {2}
    assert vl_convert.vegalite_to_svg(chart_spec(chart)).startswith("<svg")
    assert charts.learning_curves(pl.DataFrame(rows).drop("train_loss_curve")) is None


def test_report_says_where_the_hessian_saw_fewer_samples():
    from raystudy.analysis.sections import hessian_sample_note, overview
    rows = pl.DataFrame({"block": ["a", "a", "b"], "hessian_n": [128, 128, 256], "measure_n": [256, 256, 256]})
    assert hessian_sample_note(rows) == "block a: Hessian on n=128, other geometry metrics on n=256"
    assert hessian_sample_note(rows.filter(pl.col("block") == "b")) == ""
    assert "the same samples as the other geometry metrics" in overview(rows.filter(pl.col("block") == "b"), "s")


def test_safety_family_is_the_protocols_three_and_jsd_stands_apart():
    """BY over the safety group corrects ECE, corruption accuracy and disagreement together (the protocol's
    family); JSD, reported beside disagreement, is not a fourth member: its p is left as it is."""
    frame = _pairs({"ece": [-0.1, -0.2, -0.3, -0.4, -0.5], "corruption_acc": [1, 2, 3, -4, 5]})
    keys = {"block": "c", "task": "digits", "model": "cnn", "regime": "sam", "lr": 0.01, "sam_rho": 0.05}
    pair_tests = pl.DataFrame([{**keys, "metric": m, "n_pairs": 5, "mean_diff": -0.01, "p": p, "p_reverse": 1 - p,
                                "method": "swap test"} for m, p in (("disagreement", 0.004), ("jsd", 0.001))])
    out = compare_to_base(frame, ["ece", "corruption_acc", "disagreement", "jsd"], pair_tests=pair_tests)
    safety = out.filter(pl.col("group") == "safety").sort("metric")
    assert safety["metric"].to_list() == ["corruption_acc", "disagreement", "ece"]
    by = sps.false_discovery_control(safety["p"].to_numpy(), method="by")
    assert safety["p_adj"].to_list() == pytest.approx(by.tolist())
    jsd = _one(out, metric="jsd")
    assert (jsd["group"], jsd["correction"], jsd["p_adj"]) == ("consistency", "none", pytest.approx(0.001))
