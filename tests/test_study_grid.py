"""Grid expansion (raystudy.study.grid): good files expand into the right trials, with stable, readable ids that
only what shapes training changes; the trials round-trip through the dicts Ray ships."""
from __future__ import annotations

import collections
import copy
import itertools
import math
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from raystudy.study import expand, load_study
from raystudy.trial import ResumeEvery, Trial
from support.studies import SMOKE, base_study, ids, write


def test_smoke_study_expands_to_the_cross_product():
    study = load_study(SMOKE)
    trials = expand(study)
    raw = yaml.safe_load(SMOKE.read_text())
    per_block = defaultdict(int)
    for t in trials:
        per_block[t.block] += 1
    # Independently: product of the lengths of the list-valued grid axes of each raw block.
    axes = ("task", "model", "regime", "seed", "lr", "momentum", "batch_size", "weight_decay", "sam_rho",
            "factor", "label_noise", "target_scale")
    expected = {b["name"]: math.prod(len(b[a]) for a in axes if isinstance(b.get(a), list)) for b in raw["blocks"]}
    assert per_block == expected == {"functions": 7 * 3, "circles": 4 * 3, "digits_cnn": 6 * 2, "digits_mlp": 6 * 2}
    assert [t.block for t in trials] == sorted((t.block for t in trials), key=list(expected).index)


def test_hyperparameter_lists_multiply(tmp_path):
    trials = expand(load_study(write(tmp_path, base_study(tmp_path))))
    dig = [t for t in trials if t.block == "dig"]
    assert len(dig) == 3 * 2 * 2 * 2  # regime x seed x lr x batch_size
    points = {(t.regime, t.seed, t.lr, t.batch_size) for t in dig}
    assert points == set(itertools.product(["base", "wd", "wd+sam"], [0, 1], [0.1, 0.01], [16, 32]))


def test_ids_stable_unique_readable(tmp_path):
    path = write(tmp_path, base_study(tmp_path))
    first = ids(path)
    copy_path = write(tmp_path, path.read_text(), name="elsewhere.yaml")
    assert ids(path) == first == ids(copy_path)  # same content -> same ids, wherever the file is
    assert len(set(first)) == len(first)
    for t in expand(load_study(path)):
        for part in (t.block, t.task, t.model, t.regime, f"s{t.seed}"):
            assert part in t.trial_id, (part, t.trial_id)
        if t.block == "dig":  # lr and batch_size vary in this block: both show in the id
            assert f"-lr{t.lr:g}-" in t.trial_id and f"-bs{t.batch_size}-" in t.trial_id
        else:  # nothing but the seed varies: no hyperparameter tags
            assert "-lr" not in t.trial_id and "-bs" not in t.trial_id
    assert "dig-digits-cnn_bn-wd+sam-s1-lr0.01-bs32-" in " ".join(first)


def changed_ids(tmp_path: Path, edit) -> tuple[list[str], list[str]]:
    study = base_study(tmp_path)
    before = ids(write(tmp_path, study, "a.yaml"))
    edited = copy.deepcopy(study)
    edit(edited["blocks"][1])
    return before, ids(write(tmp_path, edited, "b.yaml"))


@pytest.mark.parametrize("edit", [
    lambda b: b.update(lr=[0.1, 0.02]),
    lambda b: b.update(epochs=5),
    lambda b: b.update(momentum=0.5),
    lambda b: b.update(model_args={"width": 8}),
    lambda b: b.update(sam_rho=0.1),  # changes only the +sam trials, see below
    lambda b: b.update(precision="bf16"),
    lambda b: b.update(compile=True),
], ids=["lr", "epochs", "momentum", "model_args", "sam_rho", "precision", "compile"])
def test_ids_change_with_training_settings(tmp_path, edit):
    before, after = changed_ids(tmp_path, edit)
    assert len(before) == len(after) and before != after


def test_precision_and_compile_are_carried_and_default_to_plain_fp32(tmp_path):
    study = base_study(tmp_path)
    study["blocks"][1].update(precision="bf16", compile=True)
    trials = expand(load_study(write(tmp_path, study)))
    assert {(t.block, t.precision, t.compile) for t in trials} == {("circ", "fp32", False), ("dig", "bf16", True)}
    assert all(Trial.from_dict(t.to_dict()) == t for t in trials)


def test_fields_at_their_default_keep_ids_issued_before_they_existed(tmp_path):
    # Ids this file had before precision and compile were added (same content, older raystudy):
    # their checkpoints must still be found.
    before = ["circ-circles-mlp-base-s0-37a49b", "dig-digits-cnn_bn-wd+sam-s1-lr0.01-bs32-48e9cd"]
    path = write(tmp_path, base_study(tmp_path))
    assert [ids(path)[0], ids(path)[-1]] == before
    explicit = base_study(tmp_path)
    for b in explicit["blocks"]:
        b.update(precision="fp32", compile=False)
    assert ids(write(tmp_path, explicit, "explicit.yaml")) == ids(path)


FUNCTIONS_STUDY = """
    name: t
    blocks:
      - name: fn
        family: functions
        task: [sphere, rastrigin]
        model: mlp
        optimizer: adam
        lr: LR
        epochs: 2
        n_train: 64
        n_test: 64
"""


def functions_study(lr: str = "[0.001, 0.01]", target_scale: str | None = None) -> str:
    """A functions study, with a target_scale line only when given."""
    return FUNCTIONS_STUDY.replace("LR", lr) + (f"        target_scale: {target_scale}\n" if target_scale else "")


def test_target_scale_one_keeps_the_ids_issued_before_the_axis_existed(write_study):
    # Ids this file had before target_scale was added (same content, older raystudy).
    before = ["fn-sphere-mlp-base-s0-lr0.001-7576b5", "fn-sphere-mlp-base-s0-lr0.01-1057c5",
              "fn-rastrigin-mlp-base-s0-lr0.001-9af1c7", "fn-rastrigin-mlp-base-s0-lr0.01-2fa93f"]
    assert ids(write_study(functions_study())) == before
    for one in ("1", "1.0", "[1.0]"):
        path = write_study(functions_study(target_scale=one), f"one{len(one)}.yaml")
        trials = expand(load_study(path))
        assert [t.trial_id for t in trials] == before and {t.target_scale for t in trials} == {1.0}
    scaled = ids(write_study(functions_study(target_scale="10"), "ten.yaml"))
    assert [i.rsplit("-", 1)[0] for i in scaled] == [i.rsplit("-", 1)[0] for i in before]  # no tag: not an axis
    assert not set(scaled) & set(before)  # but a different target: a different hash


def test_target_scale_axis_expands_and_tags_the_ids(write_study):
    trials = expand(load_study(write_study(functions_study(lr="0.001", target_scale="[1, 10, 0.5]"))))
    assert [(t.task, t.target_scale) for t in trials] == [
        (task, a) for task in ("sphere", "rastrigin") for a in (1.0, 10.0, 0.5)]
    assert all(type(t.target_scale) is float for t in trials)
    assert len({t.trial_id for t in trials}) == 6
    for t in trials:
        assert f"-s0-a{t.target_scale:g}-" in t.trial_id, t.trial_id
        assert t.task_params == {"n_train": 64, "n_test": 64, "target_scale": t.target_scale}
        assert Trial.from_dict(t.to_dict()) == t
    # One initial weights for every target and every scale (the protocol's controlled comparison).
    assert len({t.init_seed for t in trials}) == 1
    old = trials[0].to_dict()
    del old["target_scale"]  # a checkpoint written before the field existed
    assert Trial.from_dict(old).target_scale == 1.0
    circles = expand(load_study(write_study("""
        name: c
        blocks:
          - {name: c, family: circles, task: circles, factor: 0.5, model: mlp, lr: 0.1, epochs: 1}
        """, "c.yaml")))
    assert circles[0].target_scale == 1.0 and "target_scale" not in circles[0].task_params


def test_sam_rho_and_weight_decay_only_touch_trials_that_use_them(tmp_path):
    before, after = changed_ids(tmp_path, lambda b: b.update(sam_rho=0.1, weight_decay=1e-3))
    for old, new in zip(before, after):
        # base trials train identically whatever the wd/rho settings: they keep their ids (and results).
        assert (old == new) == ("-base-" in old), (old, new)


@pytest.mark.parametrize("edit", [
    lambda b: b.update(metrics=["sam_sharpness", "ece", "fisher_rao"]),
    lambda b: b.update(resources={"cpus": 2, "gpus": 0.5}),
    lambda b: b.update(sharpness={"rhos": [0.01], "draws": 7}),
    lambda b: b.update(measure={"split": "test", "max_samples": 100}),
    lambda b: b.update(hessian={"top_k": 3}),
    lambda b: b.update(resume_every={"epochs": 2, "minutes": None}),
], ids=["metrics", "resources", "sharpness", "measure", "hessian", "resume_every"])
def test_ids_ignore_measurement_and_resources(tmp_path, edit):
    before, after = changed_ids(tmp_path, edit)
    assert before == after


def test_resume_every_and_max_failures_are_carried_with_their_defaults(tmp_path):
    study = base_study(tmp_path)
    study["blocks"][1]["resume_every"] = {"epochs": 5}
    loaded = load_study(write(tmp_path, study))
    assert loaded.max_failures == 2  # a trial whose process dies is retried twice by default
    by_block = {t.block: t.resume_every for t in expand(loaded)}
    assert by_block == {"circ": ResumeEvery(epochs=None, minutes=10.0), "dig": ResumeEvery(epochs=5, minutes=10.0)}
    study.update(max_failures=0)
    study["blocks"][1]["resume_every"] = {"epochs": None, "minutes": None}  # never
    loaded = load_study(write(tmp_path, study))
    assert loaded.max_failures == 0 and expand(loaded)[-1].resume_every == ResumeEvery(epochs=None, minutes=None)
    t = expand(loaded)[-1]
    assert Trial.from_dict(t.to_dict()) == t
    old = t.to_dict()
    del old["resume_every"]  # a checkpoint written before the field existed
    assert Trial.from_dict(old).resume_every == ResumeEvery(epochs=None, minutes=10.0)


def test_effective_regulariser_settings():
    trials = [t for t in expand(load_study(SMOKE)) if t.family == "images"]
    assert {t.regime for t in trials} == {"base", "sam", "aug", "aug+sam", "wd", "wd+sam"}
    for t in trials:
        parts = t.regime.split("+")
        assert t.weight_decay == (5e-4 if "wd" in parts else 0.0)
        assert t.sam_rho == (0.05 if "sam" in parts else None)
        assert t.augment == ("aug" in parts)
        assert t.regularisers == set(parts) - {"base"}


def test_init_seed_paired_by_seed_not_regime():
    trials = [t for t in expand(load_study(SMOKE)) if t.family == "images"]
    by_point = defaultdict(set)
    for t in trials:
        by_point[(t.task, t.model, t.seed)].add(t.init_seed)
    assert all(len(s) == 1 for s in by_point.values())  # every regime starts from the same weights
    for model in ("cnn_bn", "mlp"):
        assert by_point[("digits", model, 0)] != by_point[("digits", model, 1)]


def test_functions_share_initial_weights_across_targets():
    trials = [t for t in expand(load_study(SMOKE)) if t.family == "functions"]
    seeds = {s: {t.init_seed for t in trials if t.seed == s} for s in (0, 1)}
    assert len({t.task for t in trials}) == 7
    assert len(seeds[0]) == len(seeds[1]) == 1 and seeds[0] != seeds[1]


def test_checkpoints_always_include_the_last_epoch(tmp_path):
    by_block = {t.block: t.checkpoints for t in expand(load_study(SMOKE))}
    assert by_block == {"functions": (0, 10, 100, 1000, 2000), "circles": (100,), "digits_cnn": (8,), "digits_mlp": (8,)}
    trials = expand(load_study(write(tmp_path, base_study(tmp_path))))
    assert {t.block: t.checkpoints for t in trials} == {"circ": (3,), "dig": (1, 4)}


def test_trial_round_trips_through_json_dict():
    t = expand(load_study(SMOKE))[-1]
    assert Trial.from_dict(t.to_dict()) == t


# ---------------------------------------------------------------- bad files


def test_an_axis_the_regime_does_not_use_neither_names_nor_multiplies_it(write_study):
    """A SAM-radius sweep trains base (and wd) once per seed, not once per radius."""
    trials = expand(load_study(write_study("""
        name: rho
        blocks:
          - name: b
            family: images
            task: digits
            model: mlp
            regime: [base, wd, sam, wd+sam]
            seed: [0, 1]
            lr: 0.1
            sam_rho: [0.5, 0.05, 0.005]
            weight_decay: [1.0e-4, 5.0e-4]
            epochs: 1
        """)))
    count = collections.Counter(t.regime for t in trials)
    assert count == {"base": 2, "wd": 2 * 2, "sam": 2 * 3, "wd+sam": 2 * 3 * 2}
    assert len({t.trial_id for t in trials}) == len(trials)
    base = [t.trial_id for t in trials if t.regime == "base"]
    assert all("-rho" not in i and "-wd0" not in i for i in base)
    assert all("-rho" in t.trial_id for t in trials if t.regime == "sam")


def test_sixty_thousand_trials_expand(write_study):
    """A 60,000-trial grid expands with unique ids (the duplicate check was once quadratic: 88 s here)."""
    seeds = list(range(10000))
    path = write_study(f"""
        name: big
        blocks:
          - name: b
            family: circles
            task: circles
            factor: [0.2, 0.4, 0.6]
            model: mlp
            regime: [base, sam]
            seed: {seeds}
            lr: 0.1
            epochs: 1
        """)
    trials = expand(load_study(path))
    assert len(trials) == 60000 == len({t.trial_id for t in trials})
