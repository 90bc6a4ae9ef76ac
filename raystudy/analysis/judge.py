"""A study's verdicts from its store alone: the rows, the verdict settings its study file declared (``study.yaml``
as run), and the consistency tests on the stored predictions; written as ``report/verdicts.json``.

``python -m raystudy.report STUDY --verdicts-only`` runs this without drawing anything; the full report runs it
too and shows the same verdicts, so the page, the JSON and the console always agree.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import polars as pl

from raystudy.analysis.consistency import consistency_tests, read_predictions
from raystudy.analysis.results import load_results
from raystudy.analysis.verdicts import Verdict, verdicts
from raystudy.layout import VERDICTS_FILE, report_path, study_file
from raystudy.study import StudyError, Verdicts, verdict_settings
from raystudy.storage import Store


@dataclass(frozen=True)
class Judgement:
    """What the verdicts were computed from: ``rows`` (every result row), ``settings`` (as declared, or the
    defaults), ``settings_note`` (where the settings came from), ``pair_tests`` (consistency tests, possibly
    empty) and the ``verdicts`` themselves."""
    rows: pl.DataFrame
    settings: Verdicts
    settings_note: str
    pair_tests: pl.DataFrame
    verdicts: list[Verdict]


def declared_settings(store: Store) -> tuple[Verdicts, str]:
    """The ``verdicts`` section of the study file as run (``<study>/study.yaml``) and a note on its source.
    The defaults, saying so, when the file is missing or its section cannot be read (an edited file):
    the report states which settings decided."""
    path = study_file(store)
    if not store.exists(path):
        return Verdicts(), "the defaults: no study.yaml in the study folder"
    try:
        text = store.read_bytes(path).decode("utf-8")
        settings = verdict_settings(text, store.uri_of(path))
    except (StudyError, UnicodeDecodeError) as err:
        return Verdicts(), f"the defaults: the study file's verdicts section could not be read: {err}"
    return settings, "declared in study.yaml" if "verdicts" in text else "the defaults: study.yaml declares none"


def judge(store: Store, rows: pl.DataFrame | None = None) -> Judgement:
    """The study's verdicts. ``rows``: its result rows if already loaded (else read from the store). Cost: reads
    every result file and, for consistency, every final checkpoint's stored predictions once."""
    rows = load_results(store) if rows is None else rows
    settings, note = declared_settings(store)
    pairs = consistency_tests(rows, lambda relative: read_predictions(store, relative)) if not rows.is_empty() \
        else pl.DataFrame()
    return Judgement(rows, settings, note, pairs, verdicts(rows, settings, pairs))


def write_verdicts(store: Store, judgement: Judgement) -> str:
    """Write ``report/verdicts.json``: a list with one object per verdict, in family order (``Verdict.to_dict``,
    plus ``settings_source``); return its location (path or URI)."""
    path = report_path(store, VERDICTS_FILE)
    body = [{**v.to_dict(), "settings_source": judgement.settings_note} for v in judgement.verdicts]
    store.write_text(path, json.dumps(body, indent=1, default=str) + "\n")
    return path if store.local else store.uri_of(path)


def verdict_lines(found: list[Verdict]) -> list[str]:
    """One line per verdict for the console: 'verdict A (functions): supported - claim'."""
    return [f"verdict {v.family}{f' ({v.block})' if v.block else ''}: {v.outcome} - {v.claim}" for v in found]
