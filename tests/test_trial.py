"""raystudy.trial built by hand, without the study-file parser: the record survives JSON, the initial-weights
seed and the measurement hash follow their documented recipes (what they depend on, and what they do not)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import replace

from raystudy.seeding import derive_seed
from raystudy.trial import MEASUREMENT_FIELDS, Trial

BASE = Trial(study="s", block="c", family="circles", task="circles", model="mlp", regime="sam+wd", seed=3,
             optimizer="sgd", lr=0.05, momentum=0.9, batch_size=10, weight_decay=5e-4, sam_rho=0.05, augment=False,
             factor=0.5, label_noise=None, schedule="constant", epochs=4, checkpoints=(2, 4), n_train=None,
             n_test=None, shuffle_seed=0, model_args={"hidden": [8]}, metrics=("fisher_rao",),
             sharpness={"rhos": [0.01], "draws": 5}, trial_id="c-circles-mlp-sam+wd-s3")


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
    settings = {k: getattr(BASE, k) for k in MEASUREMENT_FIELDS}
    want = hashlib.sha256(json.dumps(settings, sort_keys=True, default=list).encode()).hexdigest()[:8]
    assert BASE.measure_hash == want and len(want) == 8
    assert replace(BASE, lr=1.0, epochs=9, seed=0).measure_hash == want  # training settings: not measurement
    assert replace(BASE, sharpness={"rhos": [0.01], "draws": 6}).measure_hash != want
    assert replace(BASE, measure={"max_samples": 128}).measure_hash != want
    listed = replace(BASE, metric_settings={"pac_bayes": {"draws": 8}})
    settings["metric_settings"] = {"pac_bayes": {"draws": 8}}
    assert listed.measure_hash == hashlib.sha256(
        json.dumps(settings, sort_keys=True, default=list).encode()).hexdigest()[:8] != want


def test_task_params_and_regularisers_per_family():
    assert BASE.task_params == {"factor": 0.5} and BASE.regularisers == {"sam", "wd"}
    assert replace(BASE, label_noise=0.2).task_params == {"factor": 0.5, "label_noise": 0.2}
    fn = replace(BASE, family="functions", task="sphere", n_train=64, n_test=32, regime="base")
    assert fn.task_params == {"n_train": 64, "n_test": 32, "target_scale": 1.0} and fn.regularisers == set()
    img = replace(BASE, family="images", task="digits", factor=None, data_root="/data")
    assert img.task_params == {"data_root": "/data"}
