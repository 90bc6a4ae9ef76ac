"""The study: the file's schema, reading it, expanding its grid into trials; then what runs before any trial
(``preflight``: what only the code can check; ``cost``: the ``--dry-run`` estimate), the documented range of
every number (``bounds``) and the file's JSON Schema (``json_schema``).

The first stage: it imports no later one (plan, train, measure, analysis, cluster). Importing it does not import torch:
validating a block loads the model and task registries (and so torch, ~3 s), reading only the ``verdicts``
section (the report) never does; ``preflight`` and ``cost`` are submodules, imported where they run.
"""
from raystudy.study.grid import expand
from raystudy.study.load import StudyError, load_study, read_study_text, verdict_settings
from raystudy.study.schema import (AXES, CLASSIFICATION_METRICS, METRICS, REGULARISERS, SAFETY_METRICS,
                                   SHARPNESS_METRICS, Analysis, Block, Measure, Resources, ResumeEvery, Study,
                                   VerdictGroup, Verdicts, canonical_regime, grid_size)

__all__ = ["AXES", "CLASSIFICATION_METRICS", "METRICS", "REGULARISERS", "SAFETY_METRICS", "SHARPNESS_METRICS",
           "Analysis", "Block", "Measure", "Resources", "ResumeEvery", "Study", "StudyError", "VerdictGroup",
           "Verdicts", "canonical_regime", "expand", "grid_size", "load_study", "read_study_text",
           "verdict_settings"]
