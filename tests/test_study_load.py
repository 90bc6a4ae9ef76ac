"""Reading a study file (raystudy.study.load): bad files fail with one line naming the file and the field, before
anything is created or started (exit code 2 from the command line)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from raystudy.study import StudyError, Verdicts, expand, load_study, verdict_settings
from support.studies import base_study, write


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


def test_verdict_settings_from_the_study_file_as_run():
    assert verdict_settings("name: s\nblocks: []\n", "s.yaml") == Verdicts()  # other fields are not checked here
    declared = verdict_settings("name: s\nverdicts: {sharpness: {metrics: [sam_sharpness@5e-3], combine: majority}}",
                                "s.yaml")
    assert declared.sharpness.metrics == ["sam_sharpness@5e-3"] and declared.sharpness.combine == "majority"
