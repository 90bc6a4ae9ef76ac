"""Family A's amplitude control end to end, without Ray: one target function at amplitudes 1, 10 and 100, trained,
measured and judged from the store. Raw sharpness climbs with the amplitude; the verdict does not move."""
from __future__ import annotations

import json

import polars as pl
import pytest

from raystudy.analysis.charts_verdicts import functions_amplitude_chart
from raystudy.analysis.judge import judge, write_verdicts
from raystudy.analysis.results import load_results
from raystudy.checkpoints import list_checkpoints
from raystudy.measure import measure_checkpoint, write_row
from raystudy.study import expand, load_study
from raystudy.storage import Store
from raystudy.train.loop import train_trial
from support.studies import function_block, write_study_yaml

pytestmark = pytest.mark.usefixtures("one_thread")

# One target at three amplitudes, three seeds each: 9 trials trained long enough (150 epochs) to fit.
AMPLITUDES = function_block(name="sphere", target_scale=[1, 10, 100], model_args={"hidden": [16, 16]}, seed=[0, 1, 2],
                            epochs=150, n_train=128, metrics=["sam_sharpness", "hessian"],
                            sharpness={"rhos": [5.0e-3], "draws": 10},
                            hessian={"top_k": 1, "trace_hvp": 6, "density_runs": 1, "density_steps": 4})


def test_amplitude_moves_raw_sharpness_not_the_verdict(tmp_path):
    path = write_study_yaml(tmp_path, "amplitude", AMPLITUDES)
    trials = expand(load_study(path))
    assert len(trials) == 9
    store = Store(str(tmp_path / "runs" / "amplitude"))
    store.write_bytes(store.path("study.yaml"), path.read_bytes())  # as `raystudy.run` stores the file as run
    for trial in trials:
        train_trial(trial, store)
        write_row(store, measure_checkpoint(store, list_checkpoints(store, trial.trial_id)[-1].path))
    rows = load_results(store)
    raw = rows.group_by("target_scale").agg(pl.col("hessian_lambda_max").mean()).sort("target_scale")
    lam = raw["hessian_lambda_max"].to_list()
    assert lam[0] < lam[1] < lam[2] and lam[2] > 100 * lam[0]  # raw curvature grows ~ with amplitude squared
    assert rows["target_shape_complexity"].n_unique() == 1  # one shape at every amplitude
    judgement = judge(store)
    v, = judgement.verdicts
    assert (v.family, v.block, v.outcome) == ("A", "sphere", "inconclusive")
    assert "1 distinct target shape complexity" in v.why
    assert json.loads(open(write_verdicts(store, judgement)).read())[0]["outcome"] == "inconclusive"
    chart = functions_amplitude_chart(rows, judgement.settings)
    data = pl.DataFrame(next(iter(chart.to_dict()["datasets"].values())))
    assert set(data["side"]) == {"raw", "relative to the target variance"} and data["target_scale"].n_unique() == 3
