"""The study folder's layout, defined once: every path under ``<storage>/<study>/``.

    study.yaml                                  the study file as run
    lock.json                                   one run at a time (raystudy.lock)
    checkpoints/<trial>/epoch_NNNNNN.pt         a measured checkpoint (raystudy.checkpoints)
    checkpoints/<trial>/resume.pt               the trial's resume point (not measured)
    results/<trial>/epoch_NNNNNN-m<hash>.parquet   its result row; <hash> names the measurement settings
    results/<trial>/epoch_NNNNNN.predictions.npz   its test-set predictions (functional consistency)
    ray/tune/, ray/train/<trial>/               Ray Tune's and Train's own state
    report/index.html, report/verdicts.json, report/built_from.json, report/*.png (only with --png)

Paths are strings on the study Store's filesystem (``store.path(...)``); a row records its predictions
relative to the study root. Names beginning with "." or "_" are files in flight (atomic writers) and are
never listed as results.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from raystudy.storage import Store

STUDY_FILE, LOCK_FILE = "study.yaml", "lock.json"
CHECKPOINTS, RESULTS, RAY, REPORT = "checkpoints", "results", "ray", "report"
OUTPUTS = (CHECKPOINTS, RESULTS, RAY, REPORT)  # what a run writes and `--fresh` deletes
_CHECKPOINT = re.compile(r"epoch_(?P<epoch>\d+)\.pt")
_RESULT = re.compile(r"(?P<trial>[^/]+)/epoch_(?P<epoch>\d+)(?:-m(?P<hash>[0-9a-f]+))?\.parquet")


def study_file(store: Store) -> str:
    return store.path(STUDY_FILE)


def lock_file(store: Store) -> str:
    return store.path(LOCK_FILE)


def checkpoints_dir(store: Store, trial_id: str) -> str:
    return store.path(CHECKPOINTS, trial_id)


def checkpoint_path(store: Store, trial_id: str, epoch: int) -> str:
    return store.path(CHECKPOINTS, trial_id, f"epoch_{epoch:06d}.pt")


def checkpoint_epoch(path: str) -> int | None:
    """The epoch a checkpoint file name says, or None for any other file (resume point, temp file)."""
    m = _CHECKPOINT.fullmatch(path.rstrip("/").rsplit("/", 1)[-1])
    return int(m["epoch"]) if m else None


def checkpoint_trial(path: str) -> str:
    """The trial id of a checkpoint path (``.../checkpoints/<trial_id>/epoch_N.pt``)."""
    return path.rstrip("/").rsplit("/", 2)[-2]


def resume_path(store: Store, trial_id: str) -> str:
    return store.path(CHECKPOINTS, trial_id, "resume.pt")


def results_dir(store: Store, trial_id: str | None = None) -> str:
    return store.path(RESULTS, trial_id) if trial_id else store.path(RESULTS)


def result_path(store: Store, trial_id: str, epoch: int, measure_hash: str) -> str:
    """``results/<trial_id>/epoch_NNNNNN-m<hash>.parquet``: the hash of the measurement settings names the
    file, so one listing tells which rows are current without opening any."""
    return store.path(RESULTS, trial_id, f"epoch_{epoch:06d}-m{measure_hash}.parquet")


@dataclass(frozen=True)
class RowFile:
    """One result file as its name and listing describe it (no read)."""
    trial_id: str
    epoch: int
    measure_hash: str  # "" for rows written before the hash named the file
    path: str
    size: int


def row_files(store: Store, trial_id: str | None = None) -> list[RowFile]:
    """Every result file (of one trial, or of the study), parsed from one listing; on an object store one
    request per 1,000 files, not one per trial."""
    results = results_dir(store)
    out = []
    for info in store.files(results_dir(store, trial_id), suffix=".parquet", recursive=trial_id is None):
        m = _RESULT.fullmatch(info.path[len(results) + 1:])
        if m:
            out.append(RowFile(m["trial"], int(m["epoch"]), m["hash"] or "", info.path, info.size))
    return out


def measured(files: list[RowFile], current: dict[str, str] | None = None) -> set[tuple[str, int]]:
    """``(trial_id, epoch)`` pairs among the result ``files`` (``row_files``); with ``current`` (trial id ->
    measurement hash) only rows measured under the current settings count. No I/O."""
    return {(f.trial_id, f.epoch) for f in files if current is None or current.get(f.trial_id) == f.measure_hash}


def predictions_path(trial_id: str, epoch: int) -> str:
    """Where a checkpoint's predictions live, relative to the study root (what the row records)."""
    return f"{RESULTS}/{trial_id}/epoch_{epoch:06d}.predictions.npz"


def predictions_file(store: Store, relative: str) -> str:
    """The Store path of predictions a row records, relative to the study root. The string comes from a file
    anyone with write access to the bucket could have crafted: ValueError unless it names a predictions
    file inside the study's results/ folder (no '..', no absolute path), so nothing outside is ever read."""
    parts = str(relative).split("/")
    if (len(parts) < 3 or parts[0] != RESULTS or any(p in ("", ".", "..") or "\\" in p for p in parts)
            or not parts[-1].endswith(".predictions.npz")):
        raise ValueError(f"{relative!r} is not a predictions file inside the study's results/ folder")
    return store.path(*parts)


VERDICTS_FILE = "verdicts.json"  # in report/: the verdicts the page states, one record per claim and block


def report_path(store: Store, name: str | None = None) -> str:
    return store.path(REPORT, name) if name else store.path(REPORT)


def ray_dir(store: Store, *parts: str) -> str:
    return store.path(RAY, *parts)
