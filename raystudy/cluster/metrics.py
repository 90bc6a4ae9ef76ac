"""The study's own Ray metrics, so the dashboard shows study progress and not only Ray's.

Exported through ``ray.util.metrics`` (Prometheus, scraped by the dashboard's metrics view):
``raystudy_trials_finished``, ``raystudy_trials_failed``, ``raystudy_checkpoints_measured``,
``raystudy_analysis_queue_depth`` and ``raystudy_measure_seconds``, each tagged with the study.
"""
from __future__ import annotations

from functools import lru_cache

from ray.util import metrics as m

_STUDY = {"study": ""}


def set_study(name: str) -> None:
    _STUDY["study"] = name


@lru_cache(maxsize=None)
def _metrics() -> dict:
    keys = ("study",)
    return {
        "finished": m.Counter("raystudy_trials_finished", "Trials that finished training", tag_keys=keys),
        "failed": m.Counter("raystudy_trials_failed", "Trials that failed", tag_keys=keys),
        "measured": m.Counter("raystudy_checkpoints_measured", "Checkpoints measured", tag_keys=keys),
        "depth": m.Gauge("raystudy_analysis_queue_depth", "Checkpoints waiting or being measured", tag_keys=keys),
        "seconds": m.Histogram("raystudy_measure_seconds", "Seconds per checkpoint measurement",
                               boundaries=[0.1, 0.3, 1, 3, 10, 30, 100, 300], tag_keys=keys),
    }


def trial_finished(failed: bool = False) -> None:
    _metrics()["failed" if failed else "finished"].inc(1, tags=_STUDY)


def measured(seconds: float) -> None:
    _metrics()["measured"].inc(1, tags=_STUDY)
    _metrics()["seconds"].observe(seconds, tags=_STUDY)


def queue_depth(n: int) -> None:
    _metrics()["depth"].set(n, tags=_STUDY)
