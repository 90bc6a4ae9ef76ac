"""The metric registry drives spec validation, the measuring dispatch, the row schema, the report's labels, the
sharpness sets and the README's column list; and moving the metrics into it changed no trial id or
measure_hash of a shipped study (pinned from main before the move)."""
import hashlib
import re
from pathlib import Path

import polars as pl
import pytest

from raystudy import metrics, study
from raystudy.analysis.correlation import sharpness_columns
from raystudy.analysis.labels import metric_label
from raystudy.checkpoints import list_checkpoints
from raystudy.measure import measure_checkpoint
from raystudy.metrics import Column, Metric, get_metric, list_metrics, register_metric
from raystudy.schema import COLUMNS, HESSIAN, SCHEMA, SHARPNESS
from raystudy.study import StudyError, expand, load_study
from raystudy.storage import Store
from raystudy.train.loop import train_trial
from support.studies import write_study_yaml

ROOT = Path(__file__).parent.parent
pytestmark = pytest.mark.usefixtures("one_thread")


def test_registry_holds_every_metric_with_its_settings_and_columns():
    assert list_metrics() == ["ece", "corruption", "consistency", "fisher_rao", "relative_flatness", "sam_sharpness",
                              "adaptive_sharpness", "complexity", "hessian", "pac_bayes"]
    keys = {m.name: m.settings_key for m in metrics.metrics()}
    assert keys == {"ece": None, "corruption": "corruption", "consistency": None, "fisher_rao": None,
                    "relative_flatness": None, "sam_sharpness": "sharpness", "adaptive_sharpness": "adaptive",
                    "complexity": "complexity", "hessian": "hessian", "pac_bayes": "pac_bayes"}
    for m in metrics.metrics():  # each settings model is the Block field under its key, with its defaults
        if m.settings is not None:
            assert study.Block.model_fields[m.settings_key].annotation is m.settings
            assert getattr(study.Block.model_validate({**_block(), "name": "b"}), m.settings_key) == m.settings()
    # the settings classes keep their names (the JSON Schema's $defs, field paths like sharpness.draws)
    assert [get_metric(n).settings.__name__ for n in ("sam_sharpness", "hessian", "adaptive_sharpness", "complexity",
            "corruption")] == ["Sharpness", "Hessian", "Adaptive", "Complexity", "Corruption"]
    assert get_metric("pac_bayes").settings().model_dump() == {"bound": 0.1, "eps": 1e-3, "draws": 32}
    with pytest.raises(KeyError, match="unknown metric 'nope'; known: ece, corruption"):
        get_metric("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_metric(Metric("ece", columns=(), compute=lambda ctx: {}))
    with pytest.raises(ValueError, match="columns \\['fisher_rao'\\] are already registered"):
        register_metric(Metric("fr2", columns=(Column("fisher_rao", pl.Float64, "sharpness", "x"),),
                               compute=lambda ctx: {}))
    assert "fr2" not in list_metrics()


def test_schema_labels_and_sharpness_sets_come_from_the_registry():
    by_name = {c.name: c for c in COLUMNS}
    for c in metrics.metric_columns():
        assert by_name[c.name] is c and SCHEMA[c.name] == c.dtype
        if c.label:
            assert metric_label(c.name) == c.label
    assert SHARPNESS == ("fisher_rao", "relative_flatness", "sam_sharpness", "adaptive_sharpness", "pac_bayes_flatness")
    assert HESSIAN == ("hessian_lambda_max", "hessian_trace")
    assert "pac_bayes_flatness" in study.SHARPNESS_METRICS  # a verdict may name it ...
    assert "pac_bayes_flatness" not in study.Verdicts().sharpness.metrics  # ... but the defaults are unchanged
    # the correlation analysis takes a newly registered sharpness metric with no edit of its own
    rows = pl.DataFrame({"seed": [0, 0, 0], "sam_sharpness": [1.0, 2.0, 3.0], "pac_bayes_flatness": [4.0, 5.0, 6.0]})
    assert ("PAC-Bayes flatness (1/sigma'^2)", "pac_bayes_flatness") in sharpness_columns(rows)[1]


def test_readme_names_every_registry_column_and_metric():
    readme = (ROOT / "README.md").read_text()
    missing = [n for n in [c.name for c in metrics.metric_columns()] + list_metrics()
               if not re.search(rf"\b{n}\b", readme)]
    assert not missing, f"README lacks {missing}"


def _block(**over):
    """A circles block, or with ``family="functions"`` a sphere block (no factor)."""
    base = {"name": "b", "family": "circles", "task": "circles", "model": "mlp", "factor": 0.5, "lr": 0.1, "epochs": 1}
    if over.get("family") == "functions":
        base.update(task="sphere")
        del base["factor"]
    return {**base, **over}


def _load(tmp_path, **over):
    path = write_study_yaml(tmp_path, "s", _block(**over), storage="./runs")
    return load_study(path), path


@pytest.mark.parametrize("over, message", [
    ({"metrics": ["pac_bayes", "flatness"]}, "blocks[0].metrics: unknown metric 'flatness'; known: ece, "),
    ({"family": "functions", "metrics": ["sam_sharpness", "fisher_rao"]},
     "blocks[0].metrics: fisher_rao need a classification task, not 'functions'"),
    ({"metrics": ["corruption"]}, "blocks[0].metrics: corruption needs an images task with a corruption set, not 'circles'"),
    ({"metrics": ["images_only"]}, "blocks[0].metrics: images_only needs an images task, not 'circles'"),
    ({"pac_bayes": {"draws": 0}}, "blocks[0].pac_bayes.draws: Input should be greater than or equal to 1"),
    ({"pac_bayes": {"bound": "0.1"}}, "blocks[0].pac_bayes.bound: Input should be a valid number"),
    ({"pac_bayes": {"sigma": 1}}, "blocks[0].pac_bayes.sigma: unknown key"),
    ({"sharpness": {"draws": 0}}, "blocks[0].sharpness.draws: Input should be greater than or equal to 1"),
    ({"adaptive": {"m": 8}}, "blocks[0].adaptive.m: m-sharpness is defined for the worst case only"),
])
def test_spec_validation_follows_the_registry(tmp_path, monkeypatch, over, message):
    # A metric registered for images only is refused on circles, by the same check as the shipped ones.
    monkeypatch.setitem(metrics.registry._METRICS, "images_only",
                        Metric("images_only", columns=(), compute=lambda ctx: {}, families=("images",)))
    with pytest.raises(StudyError) as err:
        _load(tmp_path, **over)
    assert str(err.value).startswith(f"{tmp_path / 's.yaml'}: {message}")


def test_a_registered_metric_that_applies_is_accepted(tmp_path):
    study, _ = _load(tmp_path, family="functions", metrics=["pac_bayes"], pac_bayes={"draws": 4})
    (trial,) = expand(study)
    assert trial.metric_settings == {"pac_bayes": get_metric("pac_bayes").settings(bound=0.1, eps=1e-3, draws=4)}
    assert trial.to_dict()["metric_settings"] == {"pac_bayes": {"bound": 0.1, "eps": 1e-3, "draws": 4}}


STUDY = """
name: all
storage: {tmp}/runs
blocks:
  - name: img
    family: images
    task: digits
    model: cnn_bn
    model_args: {width: 2}
    lr: 0.05
    batch_size: 256
    epochs: 1
    checkpoints: [0]
    metrics: [ece, corruption, consistency, fisher_rao, relative_flatness, sam_sharpness, adaptive_sharpness,
              complexity, hessian, pac_bayes]
    sharpness: {rhos: [0.01], draws: 2}
    adaptive: {kind: [worst], n_iter: 1}
    complexity: {lines: 2, points: 8}
    hessian: {trace_hvp: 3, density_runs: 1, density_steps: 2, max_samples: 16}
    corruption: {max_samples: 4}
    pac_bayes: {draws: 2}
    measure: {max_samples: 32}
  - name: fn
    family: functions
    task: sphere
    model: mlp
    model_args: {hidden: [4], activation: relu}
    lr: 0.01
    epochs: 1
    n_train: 32
    n_test: 16
    metrics: [sam_sharpness, complexity, pac_bayes]
    sharpness: {rhos: [0.01], draws: 2}
    complexity: {lines: 2, points: 8}
    pac_bayes: {draws: 2}
"""


def test_dispatch_fills_exactly_the_selected_metrics_columns(tmp_path, write_study):
    """Every measured column of every metric a trial gets is filled, every other metric column is null."""
    for trial in expand(load_study(write_study(STUDY))):
        store = Store(str(tmp_path / "runs" / "all"))
        train_trial(trial, store)
        row = measure_checkpoint(store, list_checkpoints(store, trial.trial_id)[0].path)
        assert row["status"] == "ok"
        chosen = {m.name for m in metrics.metrics() if (m.always or m.name in trial.metrics)
                  and trial.family in m.families}
        assert chosen == ({"ece", *trial.metrics} if trial.family == "images" else set(trial.metrics))
        for m in metrics.metrics():
            for c in m.columns:
                filled = row[c.name] is not None
                assert filled == (m.name in chosen and c.measured), (trial.block, c.name, row[c.name])


def test_measure_hash_and_trial_ids_of_shipped_studies_are_pinned():
    """Pinned on main before the registry (commit 7945440): a changed hash would re-measure every stored row,
    a changed id would orphan every checkpoint."""
    pins = {"smoke.yaml": ("6ed72c88c9be39a4", {"circles": "ab94bc28", "digits_cnn": "d2774bf7",
                                                "digits_mlp": "596ebdf0", "functions": "a5965a09"}),
            "digits.yaml": ("85169e15b3120b78", {"digits_cnn": "a3b4a53b", "digits_mlp": "8d3cf42a"})}
    for name, (ids, hashes) in pins.items():
        trials = expand(load_study(ROOT / "studies" / name))
        assert hashlib.sha256("\n".join(t.trial_id for t in trials).encode()).hexdigest()[:16] == ids, name
        assert {t.block: t.measure_hash for t in trials} == hashes, name
        assert all(t.metric_settings == {} for t in trials)
