"""The study file's schema (raystudy.study.schema): regimes, the verdicts' settings, and the shipped study files
and the README agree with it."""
from __future__ import annotations

import collections
from pathlib import Path

import pytest
import yaml

from raystudy.study import StudyError, Verdicts, canonical_regime, expand, load_study, verdict_settings
from support.studies import base_study, write


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


@pytest.mark.parametrize("path", sorted(Path(__file__).parent.parent.glob("studies/*.yaml")), ids=lambda p: p.name)
def test_every_shipped_study_file_is_valid(path):
    assert expand(load_study(path))


def test_digits_study_is_family_c_paired_over_ten_seeds_and_passes_preflight():
    """studies/digits.yaml: 2 models x 6 regimes x 10 seeds = 120 trials, every regime of a seed present (the
    paired tests need it), corruption measured on digits-c, the Hessian on the other metrics' sample."""
    from raystudy.study.preflight import preflight
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
    from raystudy.study import METRICS
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
