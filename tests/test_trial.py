"""The trial record (raystudy.trial): typed settings that read as attributes, a plain-data form that survives
JSON (Ray ships trials as dicts, checkpoints store one) and comes back typed, and old records still load."""
from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest

from raystudy.metrics.hessian import Hessian
from raystudy.metrics.pac_bayes import PacBayes
from raystudy.metrics.sam_sharpness import Sharpness
from raystudy.seeding import derive_seed
from raystudy.study import expand, load_study
from raystudy.trial import MEASUREMENT_FIELDS, Measure, Resources, ResumeEvery, Trial
from support.studies import SMOKE

# A Trial built by hand, without the study-file parser.
BASE = Trial(study="s", block="c", family="circles", task="circles", model="mlp", regime="sam+wd", seed=3,
             optimizer="sgd", lr=0.05, momentum=0.9, batch_size=10, weight_decay=5e-4, sam_rho=0.05, augment=False,
             factor=0.5, label_noise=None, schedule="constant", epochs=4, checkpoints=(2, 4), n_train=None,
             n_test=None, shuffle_seed=0, model_args={"hidden": [8]}, metrics=("fisher_rao",),
             sharpness=Sharpness(rhos=[0.01], draws=5), trial_id="c-circles-mlp-sam+wd-s3")


def test_the_record_survives_json():
    back = Trial.from_dict(json.loads(json.dumps(BASE.to_dict())))
    assert back == BASE and back.checkpoints == (2, 4) and back.metrics == ("fisher_rao",)


def test_initial_weights_seed_by_hand():
    assert BASE.init_seed == derive_seed("init", "circles", "circles", "mlp", {"hidden": [8]}, 3)
    # every regime of a seed starts from the same weights; another seed or width does not
    assert replace(BASE, regime="base", lr=0.1).init_seed == BASE.init_seed
    assert replace(BASE, seed=4).init_seed != BASE.init_seed
    assert replace(BASE, model_args={"hidden": [16]}).init_seed != BASE.init_seed
    fn = replace(BASE, family="functions", task="sphere", factor=None)
    assert fn.init_seed == replace(fn, task="rastrigin").init_seed == derive_seed(
        "init", "functions", "*", "mlp", {"hidden": [8]}, 3)  # one start for every target function


def test_measure_hash_by_hand():
    settings = {k: BASE.to_dict()[k] for k in MEASUREMENT_FIELDS}  # the settings as plain data
    want = hashlib.sha256(json.dumps(settings, sort_keys=True, default=list).encode()).hexdigest()[:8]
    assert BASE.measure_hash == want and len(want) == 8
    assert replace(BASE, lr=1.0, epochs=9, seed=0).measure_hash == want  # training settings: not measurement
    assert replace(BASE, sharpness=Sharpness(rhos=[0.01], draws=6)).measure_hash != want
    assert replace(BASE, measure=Measure(max_samples=128)).measure_hash != want
    listed = replace(BASE, metric_settings={"pac_bayes": PacBayes(draws=8)})
    settings["metric_settings"] = {"pac_bayes": PacBayes(draws=8).model_dump()}
    assert listed.measure_hash == hashlib.sha256(
        json.dumps(settings, sort_keys=True, default=list).encode()).hexdigest()[:8] != want


def test_task_params_and_regularisers_per_family():
    assert BASE.task_params == {"factor": 0.5} and BASE.regularisers == {"sam", "wd"}
    assert replace(BASE, label_noise=0.2).task_params == {"factor": 0.5, "label_noise": 0.2}
    fn = replace(BASE, family="functions", task="sphere", n_train=64, n_test=32, regime="base")
    assert fn.task_params == {"n_train": 64, "n_test": 32, "target_scale": 1.0} and fn.regularisers == set()
    img = replace(BASE, family="images", task="digits", factor=None, data_root="/data")
    assert img.task_params == {"data_root": "/data"}


def test_settings_are_typed_and_round_trip_through_json():
    for t in expand(load_study(SMOKE)):
        assert isinstance(t.sharpness, Sharpness) and isinstance(t.hessian, Hessian)
        assert isinstance(t.measure, Measure) and isinstance(t.resources, Resources)
        assert isinstance(t.resume_every, ResumeEvery)
        plain = json.loads(json.dumps(t.to_dict()))  # no model object left in the dict
        assert plain["sharpness"] == t.sharpness.model_dump() and plain["measure"]["split"] == t.measure.split
        back = Trial.from_dict(plain)
        assert back == t and back.measure_hash == t.measure_hash and back.sharpness.rhos == t.sharpness.rhos


def test_metric_settings_come_back_as_their_metrics_models(write_study):
    (t,) = expand(load_study(write_study("""
        name: s
        blocks:
          - {name: fn, family: functions, task: sphere, model: mlp, lr: 0.01, epochs: 1,
             metrics: [pac_bayes], pac_bayes: {draws: 4}}
        """)))
    back = Trial.from_dict(json.loads(json.dumps(t.to_dict())))
    assert back.metric_settings["pac_bayes"].draws == 4 and back == t
    assert type(back.metric_settings["pac_bayes"]).__name__ == "PacBayes"


def test_bad_or_unknown_settings_in_a_record_are_refused():
    d = expand(load_study(SMOKE))[0].to_dict()
    with pytest.raises(ValueError, match="draws"):
        Trial.from_dict({**d, "sharpness": {**d["sharpness"], "draws": 0}})
    with pytest.raises(ValueError, match="no registered metric has settings under 'gone'"):
        Trial.from_dict({**d, "metric_settings": {"gone": {}}})


def test_a_record_from_before_a_settings_field_takes_its_default():
    d = expand(load_study(SMOKE))[0].to_dict()
    del d["resume_every"], d["metric_settings"]
    t = Trial.from_dict(d)
    assert t.resume_every == ResumeEvery() == ResumeEvery(epochs=None, minutes=10.0) and t.metric_settings == {}
