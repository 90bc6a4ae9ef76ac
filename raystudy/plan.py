"""What is left to do in a study, read from its storage alone: which trials still train, which checkpoints
still need a row. Everything a run will read anyway is checked here, before Ray starts: the study file,
the models and datasets (``preflight``), the storage, every checkpoint a resumed trial or the measuring
pool will load, and every result file (a truncated one is reported and measured again, never trusted).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from raystudy.checkpoints import CheckpointError, CheckpointRef, list_checkpoints, load_checkpoint
from raystudy.measure.rows import RowFile, measured, row_files
from raystudy.preflight import preflight
from raystudy.spec import Study, StudyError, expand, load_study
from raystudy.trial import Trial
from raystudy.storage import Store, StorageError, first_line, study_store

PARQUET_MAGIC = b"PAR1"  # a complete Parquet file ends with its footer length and these four bytes


@dataclass
class Plan:
    study: Study
    trials: list[Trial]
    store: Store
    to_train: list[Trial]  # not every checkpoint exists yet
    to_measure: list[str]  # checkpoints without a current result row
    damaged: list[str]  # result files that are not complete Parquet files: "path: problem", re-measured
    measured: int = 0  # checkpoints of the study's trials with a current row already


def open_store(study: Study, study_path: str, storage: str | None = None) -> Store:
    """The study's folder in its storage, checked usable before anything is written (StudyError if not)."""
    where = "--storage" if storage else f"{study_path}: storage"
    try:
        return study_store(storage or study.storage, study.name)
    except StorageError as err:
        raise StudyError(f"{where}: {err}") from None


def plan(study_path: str, fresh: bool = False, storage: str | None = None, remeasure: bool = False,
         before_writing=None, loggers: list[str] | tuple[str, ...] = ()) -> Plan:
    """Read the study and its storage and decide what is left. ``fresh`` deletes the study's own results
    first; ``remeasure`` measures every checkpoint again; ``loggers`` adds Tune loggers to the study's own;
    ``before_writing(store)`` runs after the checks
    and before anything is written or deleted (the CLI takes the study's lock there). Raises StudyError on
    bad input, including a corrupt checkpoint that a resumed trial or the pool would have to read."""
    study = load_study(study_path)
    if storage:
        study = study.model_copy(update={"storage": storage})
    if loggers:
        study = study.model_copy(update={"loggers": list(dict.fromkeys([*study.loggers, *loggers]))})
    preflight(study, study_path)
    trials = expand(study)
    store = open_store(study, study_path, storage)
    if before_writing is not None:
        before_writing(store)
    try:
        if fresh:  # the study's own subfolders only (delete_dir refuses anything outside its root)
            for sub in ("checkpoints", "results", "ray", "report"):
                store.delete_dir(store.path(sub))
        store.write_bytes(store.path("study.yaml"), open(study_path, "rb").read())
    except OSError as err:
        raise StudyError(f"{study_path}: storage: {study.storage}: cannot write {store.uri}: {first_line(err)}") \
            from None
    rows, damaged = complete_rows(store)
    done = set() if remeasure else measured(rows, _hashes(trials))
    to_train, to_measure = [], []
    for t in trials:
        on_disk = list_checkpoints(store, t.trial_id)
        epochs = {r.epoch for r in on_disk}
        unmeasured = unmeasured_paths(on_disk, done)
        # Read what will be read anyway, up front: a corrupt file is bad input, reported before
        # anything starts rather than as a failure deep inside a trial.
        check = set(unmeasured) | ({on_disk[-1].path} if on_disk and not set(t.checkpoints) <= epochs else set())
        for path in sorted(check):
            try:
                load_checkpoint(store, path)
            except CheckpointError as err:
                raise StudyError(_set_aside(store, path, err)) from None
        to_measure += unmeasured
        if not set(t.checkpoints) <= epochs:
            to_train.append(t)
    current = sum((t.trial_id, e) in done for t in trials for e in t.checkpoints)
    return Plan(study, trials, store, to_train, to_measure, damaged, current)


def _set_aside(store: Store, path: str, err: CheckpointError) -> str:
    """Move a corrupt checkpoint out of the way (kept, renamed ``.corrupt``, never deleted) so the rerun
    retrains or re-measures it from what is intact; the one line that says so."""
    aside = f"{path}.corrupt"
    try:
        store.move(path, aside)
    except OSError as move_err:
        return f"{err}; could not set it aside ({first_line(move_err)}): delete it, then rerun to redo it"
    return f"{err}; set aside as {aside.rsplit('/', 1)[1]}: rerun the same command to redo that checkpoint"


def complete_rows(store: Store) -> tuple[list[RowFile], list[str]]:
    """The study's result files that end like a complete Parquet file, and "path: problem" for those that
    do not (a truncated or overwritten file): those count as not measured, so the run measures them again
    and replaces them. Cost: one listing plus one ranged read of 4 bytes per file (16 at a time)."""
    files = row_files(store)
    with ThreadPoolExecutor(16) as pool:
        tails = list(pool.map(lambda f: _tail(store, f), files))
    good = [f for f, tail in zip(files, tails) if tail == PARQUET_MAGIC]
    bad = [f"{f.path}: {'empty' if f.size == 0 else 'not a complete Parquet file (truncated?)'}; measured again"
           for f, tail in zip(files, tails) if tail != PARQUET_MAGIC]
    return good, bad


def _tail(store: Store, f: RowFile) -> bytes:
    try:
        return store.tail(f.path, 4) if f.size >= 12 else b""
    except OSError:
        return b""


def _hashes(trials: list[Trial]) -> dict[str, str]:
    """trial id -> the hash of its current measurement settings (rows under other settings re-measure)."""
    return {t.trial_id: t.measure_hash for t in trials}


def unmeasured_paths(refs: list[CheckpointRef], done: set[tuple[str, int]]) -> list[str]:
    """Paths of the checkpoints in ``refs`` that have no current result row."""
    return [r.path for r in refs if (r.trial_id, r.epoch) not in done]


def still_unmeasured(p: Plan) -> list[str]:
    """Checkpoints of the plan's trials that still lack a current row (a checkpoint saved just before a
    trial died never reached Tune's callback). Cost: one listing per trial plus one of results/."""
    done = measured(complete_rows(p.store)[0], _hashes(p.trials))
    return [path for t in p.trials for path in unmeasured_paths(list_checkpoints(p.store, t.trial_id), done)]
