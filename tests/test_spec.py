"""The study file: good files expand into the right trials with stable ids; bad files fail with one
line naming the file and the field, before anything is created or started."""
from __future__ import annotations

import collections
import copy
import itertools
import math
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from raystudy.spec import StudyError, Trial, Verdicts, canonical_regime, expand, load_study, verdict_settings

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "studies" / "smoke.yaml"


def write(tmp_path: Path, study: dict | str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(study if isinstance(study, str) else yaml.safe_dump(study, sort_keys=False))
    return path


def base_study(tmp_path: Path) -> dict:
    """A small valid study: one circles block, one digits block."""
    return {
        "name": "t",
        "storage": str(tmp_path / "x"),
        "blocks": [
            {"name": "circ", "family": "circles", "task": "circles", "factor": 0.5, "model": "mlp",
             "lr": 0.01, "batch_size": 5, "epochs": 3, "seed": [0, 1]},
            {"name": "dig", "family": "images", "task": "digits", "model": "cnn_bn",
             "regime": ["base", "wd", "sam+wd"], "seed": [0, 1], "lr": [0.1, 0.01], "batch_size": [16, 32],
             "epochs": 4, "checkpoints": [1], "metrics": ["sam_sharpness", "ece"]},
        ],
    }


def ids(path: Path) -> list[str]:
    return [t.trial_id for t in expand(load_study(path))]


# ---------------------------------------------------------------- good files


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
    assert by_block == {"circ": {"epochs": None, "minutes": 10.0}, "dig": {"epochs": 5, "minutes": 10.0}}
    study.update(max_failures=0)
    study["blocks"][1]["resume_every"] = {"epochs": None, "minutes": None}  # never
    loaded = load_study(write(tmp_path, study))
    assert loaded.max_failures == 0 and expand(loaded)[-1].resume_every == {"epochs": None, "minutes": None}
    t = expand(loaded)[-1]
    assert Trial.from_dict(t.to_dict()) == t
    old = t.to_dict()
    del old["resume_every"]  # a checkpoint written before the field existed
    assert Trial.from_dict(old).resume_every == {"epochs": None, "minutes": 10.0}


def test_regimes_canonicalise(tmp_path):
    assert canonical_regime("SAM+wd") == "wd+sam"
    assert canonical_regime(" sam + AUG + wd ") == "aug+wd+sam"
    assert canonical_regime("Base") == "base"
    for bad in ("base+sam", "dropout", "sam+sam", ""):
        with pytest.raises(ValueError):
            canonical_regime(bad)
    study = base_study(tmp_path)
    study["blocks"][1]["regime"] = ["SAM+wd", "Aug"]
    assert {t.regime for t in expand(load_study(write(tmp_path, study)))} >= {"wd+sam", "aug"}


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


def block(i: int, **changes):
    def edit(s: dict) -> None:
        s["blocks"][i].update(changes)
    return edit


def functions_first(**changes):
    """blocks[0] becomes a functions block with ``changes``."""
    def edit(s: dict) -> None:
        s["blocks"][0] = {**FUNCTIONS_BLOCK, "metrics": ["sam_sharpness"], **changes}
    return edit


def drop(*keys):
    def edit(s: dict) -> None:
        target = s
        for k in keys[:-1]:
            target = target[k]
        del target[keys[-1]]
    return edit


FUNCTIONS_BLOCK = {"name": "fn", "family": "functions", "task": "sphere", "model": "mlp", "lr": 1e-3,
                   "epochs": 2, "metrics": ["sam_sharpness", "fisher_rao"]}

# (id, edit of base_study, field the message must name, words it must contain)
BAD = [
    ("unknown top-level key", lambda s: s.update(colour="red"), "colour", "unknown key"),
    ("unknown block key", block(1, learning_rate=0.1), "blocks[1].learning_rate", "unknown key"),
    ("missing name", drop("name"), "name", "missing"),
    ("missing blocks", drop("blocks"), "blocks", "missing"),
    ("empty blocks", lambda s: s.update(blocks=[]), "blocks", "at least 1"),
    ("missing lr", drop("blocks", 0, "lr"), "blocks[0].lr", "missing"),
    ("epochs not an int", block(1, epochs="many"), "blocks[1].epochs", "integer"),
    ("unknown model", block(1, model="resnet81"), "blocks[1].model", "unknown model 'resnet81'; known: "),
    ("unknown model in list", block(1, model=["cnn_bn", "resnet81"]), "blocks[1].model", "'resnet81'"),
    ("unknown task", block(1, task="cifar11"), "blocks[1].task", "unknown images task 'cifar11'"),
    ("unknown family", block(0, family="audio"), "blocks[0].family", "'functions', 'circles' or 'images'"),
    ("unknown regime part", block(1, regime="base+dropout"), "blocks[1].regime", "'base+dropout'"),
    ("unknown metric", block(1, metrics=["ece", "flatness"]), "blocks[1].metrics", "unknown metric 'flatness'"),
    ("empty seed list", block(1, seed=[]), "blocks[1].seed", "empty list"),
    ("checkpoint past epochs", block(1, checkpoints=[1, 9]), "blocks[1].checkpoints", "[0, 4]"),
    ("negative checkpoint", block(1, checkpoints=[-1, 2]), "blocks[1].checkpoints", "[0, 4]"),
    ("unsorted checkpoints", block(1, checkpoints=[3, 1]), "blocks[1].checkpoints", "increasing"),
    ("circles without factor", drop("blocks", 0, "factor"), "blocks[0].factor", "need a factor"),
    ("factor of 1", block(0, factor=1.0), "blocks[0].factor", "not in (0, 1)"),
    ("factor in list out of range", block(0, factor=[0.5, 1.2]), "blocks[0].factor", "1.2 is not in (0, 1)"),
    ("factor on images", block(1, factor=0.5), "blocks[1].factor", "only circles"),
    ("label noise above 1", block(0, label_noise=1.5), "blocks[0].label_noise", "probability"),
    ("negative lr", block(1, lr=-0.1), "blocks[1].lr", "> 0"),
    ("lr not a number", block(0, lr="fast"), "blocks[0].lr", "number"),
    ("zero sam_rho", block(1, sam_rho=0), "blocks[1].sam_rho", "> 0"),
    ("batch size 0", block(0, batch_size=0), "blocks[0].batch_size", ">= 1"),
    ("batch size 0 in list", block(1, batch_size=[16, 0]), "blocks[1].batch_size", ">= 1"),
    ("classification metric on functions", lambda s: s["blocks"].append(FUNCTIONS_BLOCK), "blocks[2].metrics",
     "fisher_rao need a classification task"),
    ("duplicate block names", block(1, name="circ"), "blocks[1].name", "duplicate block name 'circ'"),
    ("repeated regime", block(1, regime=["sam+wd", "wd+sam"]), "blocks[1].regime", "'wd+sam' is listed twice"),
    ("zero cpus", block(1, resources={"cpus": 0}), "blocks[1].resources.cpus", "greater than 0"),
    ("negative rho", block(1, sharpness={"rhos": [-0.01]}), "blocks[1].sharpness.rhos", "> 0"),
    ("bad block name", block(0, name="my block"), "blocks[0].name", "pattern"),
    ("unknown precision", block(1, precision="fp16"), "blocks[1].precision", "'fp32' or 'bf16'"),
    ("compile not a bool", block(1, compile="sometimes"), "blocks[1].compile", "boolean"),
    ("key with a newline", lambda s: s.update({"bad\nkey": 1}), "'bad\\nkey'", "unknown key"),
    # Once accepted (issue 8): each must be refused, naming its field.
    ("study named ..", lambda s: s.update(name=".."), "name", "pattern"),
    ("study named with a leading dot", lambda s: s.update(name=".hidden"), "name", "pattern"),
    ("epochs true", block(1, epochs=True), "blocks[1].epochs", "integer"),
    ("lr nan", block(1, lr=float("nan")), "blocks[1].lr", "finite"),
    ("lr inf in list", block(1, lr=[0.1, float("inf")]), "blocks[1].lr[1]", "finite"),
    ("negative momentum", block(1, momentum=-0.9), "blocks[1].momentum", ">= 0"),
    ("negative weight decay", block(1, weight_decay=[5e-4, -1e-4]), "blocks[1].weight_decay", ">= 0"),
    ("negative seed", block(1, seed=[0, -1]), "blocks[1].seed", "[0, 2^63 - 1]"),
    ("seed beyond 2^63", block(1, seed=2**63), "blocks[1].seed", "[0, 2^63 - 1]"),
    ("label noise on functions", lambda s: s["blocks"].append({**FUNCTIONS_BLOCK, "metrics": ["sam_sharpness"],
                                                               "label_noise": 0.1}),
     "blocks[2].label_noise", "functions blocks do not use label_noise"),
    ("n_train on images", block(1, n_train=100), "blocks[1].n_train", "images blocks do not use n_train"),
    ("block names differing in case", block(1, name="CIRC"), "blocks[1].name", "ignoring case"),
    ("metric listed twice", block(1, metrics=["ece", "ece"]), "blocks[1].metrics", "'ece' is listed twice"),
    ("resume every 0 epochs", block(1, resume_every={"epochs": 0}), "blocks[1].resume_every.epochs",
     "greater than or equal to 1"),
    ("resume every negative minutes", block(1, resume_every={"minutes": -1.0}), "blocks[1].resume_every.minutes",
     "greater than 0"),
    ("resume_every unknown key", block(1, resume_every={"steps": 100}), "blocks[1].resume_every.steps",
     "unknown key"),
    ("negative max_failures", lambda s: s.update(max_failures=-1), "max_failures", "greater than or equal to 0"),
    ("target_scale 0", functions_first(target_scale=0), "blocks[0].target_scale", "0 is not > 0"),
    ("target_scale negative", functions_first(target_scale=-1.0), "blocks[0].target_scale", "-1.0 is not > 0"),
    ("target_scale negative in list", functions_first(target_scale=[1.0, -1.0]), "blocks[0].target_scale",
     "-1.0 is not > 0"),
    ("target_scale nan", functions_first(target_scale=float("nan")), "blocks[0].target_scale", "finite"),
    ("target_scale inf in list", functions_first(target_scale=[1.0, float("inf")]), "blocks[0].target_scale[1]",
     "finite"),
    ("target_scale repeated", functions_first(target_scale=[1, 1.0]), "blocks[0].target_scale",
     "1.0 is listed twice"),
    ("target_scale not a number", functions_first(target_scale="big"), "blocks[0].target_scale", "number"),
    ("target_scale on circles", block(0, target_scale=10.0), "blocks[0].target_scale",
     "circles blocks do not use target_scale"),
    ("target_scale 1 on images", block(1, target_scale=1.0), "blocks[1].target_scale",
     "images blocks do not use target_scale"),
]


@pytest.mark.parametrize("edit, field, words", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_study_names_file_and_field(tmp_path, edit, field, words):
    study = base_study(tmp_path)
    edit(study)
    path = write(tmp_path, study)
    with pytest.raises(StudyError) as err:
        expand(load_study(path))  # expand too: no bad file may get past validation
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: {field}: "), msg
    assert words in msg, msg


RAW_BAD = [
    ("invalid YAML", "name: t\nblocks:\n  - name: a\n    model: [mlp\n    lr: 0.1\n", "line 5: invalid YAML"),
    ("tab indentation", "name: t\nblocks:\n\t- name: a\n", "line 3: invalid YAML"),
    ("a list, not a mapping", "- name: t\n- blocks: []\n", "expected a mapping"),
    ("duplicate key", "name: t\nname: u\nblocks: []\n", "line 2: invalid YAML: key 'name' is given twice"),
    ("alias bomb", "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                   "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n",
     "line 2: invalid YAML: alias *a is not allowed"),
    ("empty file", "", "expected a mapping"),
]


@pytest.mark.parametrize("text, words", [c[1:] for c in RAW_BAD], ids=[c[0] for c in RAW_BAD])
def test_unreadable_study(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(StudyError) as err:
        load_study(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ") and words in msg, msg


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(StudyError, match=r"nope\.yaml: file not found$") as err:
        load_study(path)
    assert str(err.value) == f"{path}: file not found"


def test_distinct_bad_cases():
    assert len({c[0] for c in BAD} | {c[0] for c in RAW_BAD}) == len(BAD) + len(RAW_BAD) >= 15


# ---------------------------------------------------------------- the command line


def test_cli_rejects_bad_files_with_one_line_and_creates_nothing(tmp_path):
    cases = {  # name -> (edit, field)
        "model": (block(1, model="resnet81"), "blocks[1].model"),
        "regime": (block(1, regime=["sam", "SAM"]), "blocks[1].regime"),  # caught at load, not in expand
    }
    procs = {}
    for name, (edit, _) in cases.items():
        study = base_study(tmp_path)
        edit(study)
        path = write(tmp_path, study, f"{name}.yaml")
        # Side by side: each pays only Python + torch/sklearn import time (~6 s CPU); Ray never starts
        # (RAY_ADDRESS points nowhere, so a connection attempt would fail differently).
        procs[name] = (path, subprocess.Popen(
            [sys.executable, "-m", "raystudy.run", str(path)], cwd=tmp_path, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "RAY_ADDRESS": "127.0.0.1:1"}))
    for name, (path, proc) in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (name, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, err
        assert lines[0].removeprefix("error: ").startswith(f"{path}: {cases[name][1]}: "), lines[0]
        assert out == ""
    assert not (tmp_path / "x").exists()  # the studies' storage: nothing written
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.yaml" for n in cases)


def test_main_returns_2_without_starting_ray(tmp_path, capsys):
    from raystudy.run import main

    study = base_study(tmp_path)
    study["blocks"][0]["model"] = "resnet81"
    path = write(tmp_path, study)
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("\n")
    assert err.removeprefix("error: ").startswith(f"{path}: blocks[0].model: unknown model 'resnet81'; known: ")
    if "ray" in sys.modules:
        import ray
        assert not ray.is_initialized()
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("path", sorted(Path(__file__).parent.parent.glob("studies/*.yaml")), ids=lambda p: p.name)
def test_every_shipped_study_file_is_valid(path):
    assert expand(load_study(path))


def test_digits_study_is_family_c_paired_over_ten_seeds_and_passes_preflight():
    """studies/digits.yaml: 2 models x 6 regimes x 10 seeds = 120 trials, every regime of a seed present (the
    paired tests need it), corruption measured on digits-c, the Hessian on the other metrics' sample."""
    from raystudy.preflight import preflight
    path = Path(__file__).parent.parent / "studies" / "digits.yaml"
    study = load_study(path)
    preflight(study, path)
    trials = expand(study)
    assert len(trials) == 120
    cells = collections.Counter((t.model, t.regime) for t in trials)
    assert set(cells.values()) == {10} and len(cells) == 12
    assert {t.regime for t in trials} == {"base", "sam", "aug", "aug+sam", "wd", "wd+sam"}
    for block in study.blocks:
        assert {"corruption", "consistency", "hessian", "sam_sharpness"} <= set(block.metrics)
        assert block.hessian.max_samples is None


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


def test_full_study_runs_every_family_c_block_of_the_dataset_studies():
    """full.yaml is the whole protocol: no block left out as a draft, and its family C blocks are exactly the
    blocks of the per-dataset studies (so the two never drift apart)."""
    studies = Path(__file__).parent.parent / "studies"
    full = yaml.safe_load((studies / "full.yaml").read_text())
    assert "DRAFT" not in (studies / "full.yaml").read_text()
    by_name = {b["name"]: b for b in full["blocks"]}
    parts = ("cifar10", "cifar100", "tinyimagenet", "cifar10_rho", "cifar10_random_labels")
    for part in parts:
        for block in yaml.safe_load((studies / f"{part}.yaml").read_text())["blocks"]:
            assert by_name.pop(block["name"]) == block
    assert set(by_name) == {"functions", "circles", "circles_random_labels"}
    tasks = {t.task for t in expand(load_study(studies / "full.yaml")) if t.family == "images"}
    assert tasks == {"cifar10", "cifar100", "tinyimagenet"}


def test_readme_lists_every_result_column_and_metric():
    """One definition of the columns (raystudy/schema.py), which the README follows."""
    from raystudy.schema import COLUMNS
    from raystudy.spec import METRICS
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    missing = [c.name for c in COLUMNS if f"{c.name}" not in readme]
    assert not missing, f"README lacks columns {missing}"
    assert all(m in readme for m in METRICS)


def test_readme_verdicts_section_shows_the_defaults():
    """The README's annotated study file lists every field of every family (it is no single valid study); its
    verdicts section is, and states the defaults."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    example = readme.split("## The study file", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    assert verdict_settings(example, "README.md") == Verdicts()


@pytest.mark.parametrize("body, message", [
    ("verdicts: {alpha: 0.5}", "verdicts.alpha: Input should be less than 0.5"),
    ("verdicts: {sharpness: {metrics: [ece]}}", "verdicts.sharpness.metrics[0]: unknown metric 'ece' for this group"),
    ("verdicts: {safety: {metrics: [ece, ece]}}", "verdicts.safety.metrics[1]: 'ece' is listed twice"),
    ("verdicts: {safety: {metrics: [ece], combine: any}}", "verdicts.safety.combine: Input should be 'all' or"),
    ("verdicts: {sharpness: {metrics: []}}", "verdicts.sharpness.metrics: List should have at least 1 item"),
    ("verdicts: {sharpness: {metrics: [sam_sharpness@x]}}", "the radius after @ must be a number > 0"),
    ("verdicts: {fit_tolerance: 0}", "verdicts.fit_tolerance: Input should be greater than 0"),
    ("verdicts: {primary: [ece]}", "verdicts.primary: unknown key"),
])
def test_verdict_settings_are_validated_with_one_line(write_study, body, message):
    path = write_study(f"""
        name: s
        {body}
        blocks:
          - {{name: c, family: circles, task: circles, factor: 0.5, model: mlp, lr: 0.1, epochs: 1}}
        """)
    with pytest.raises(StudyError) as err:
        load_study(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value) and "\n" not in str(err.value)
    # The report reads the same section from the study file as run, with the same one-line errors.
    with pytest.raises(StudyError, match="verdicts"):
        verdict_settings(path.read_text(), str(path))


def test_verdict_settings_from_the_study_file_as_run():
    assert verdict_settings("name: s\nblocks: []\n", "s.yaml") == Verdicts()  # other fields are not checked here
    declared = verdict_settings("name: s\nverdicts: {sharpness: {metrics: [sam_sharpness@5e-3], combine: majority}}",
                                "s.yaml")
    assert declared.sharpness.metrics == ["sam_sharpness@5e-3"] and declared.sharpness.combine == "majority"
