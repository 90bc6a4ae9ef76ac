"""The trial record (raystudy.trial): typed settings that read as attributes, a plain-data form that survives
JSON (Ray ships trials as dicts, checkpoints store one) and comes back typed, and old records still load."""
from __future__ import annotations

import json

import pytest

from raystudy.metrics.hessian import Hessian
from raystudy.metrics.sam_sharpness import Sharpness
from raystudy.study import expand, load_study
from raystudy.trial import Measure, Resources, ResumeEvery, Trial
from support.study_files import SMOKE


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
