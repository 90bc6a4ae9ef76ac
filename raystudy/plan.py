"""What is left to do in a study, read from its storage alone: which trials still train, which checkpoints
still need a row. Everything a run will read anyway is checked here, before Ray starts: the study file,
the models and datasets (``preflight``), the storage, every checkpoint a resumed trial or the measuring
pool will load (a corrupt one is set aside and trained again), and every result file (read whole: a damaged one
is reported and measured again, never trusted).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from raystudy.checkpoints import CheckpointError, CheckpointRef, list_checkpoints, load_checkpoint
from raystudy.layout import OUTPUTS, RowFile, measured, row_files, study_file
from raystudy.study.preflight import preflight
from raystudy.repair import set_aside
from raystudy.study import Study, StudyError, expand, load_study
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
    damaged: list[str]  # "path: problem" for damaged result files (re-measured) and checkpoints (retrained)
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
    bad input. A corrupt checkpoint the pool would read is set aside and its trial trained again (``damaged``)."""
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
            for sub in OUTPUTS:
                store.delete_dir(store.path(sub))
        store.write_bytes(study_file(store), open(study_path, "rb").read())
    except OSError as err:
        raise StudyError(f"{study_path}: storage: {study.storage}: cannot write {store.uri}: {first_line(err)}") \
            from None
    rows, damaged = complete_rows(store)
    done = set() if remeasure else measured(rows, _hashes(trials))
    to_train, to_measure = [], []
    for t in trials:
        on_disk = list_checkpoints(store, t.trial_id)
        # Read what the pool will read anyway, up front: a corrupt checkpoint is set aside here and rebuilt
        # by training in this same run (``repair.start_point``), not found deep inside a measuring actor.
        intact = [r for r in on_disk if (r.trial_id, r.epoch) in done or _readable(store, r.path, damaged)]
        to_measure += unmeasured_paths(intact, done)
        if not set(t.checkpoints) <= {r.epoch for r in intact}:
            to_train.append(t)
    current = sum((t.trial_id, e) in done for t in trials for e in t.checkpoints)
    return Plan(study, trials, store, to_train, to_measure, damaged, current)


def _readable(store: Store, path: str, damaged: list[str]) -> bool:
    """Whether the checkpoint at ``path`` loads; if not, it is set aside and "path: problem" joins ``damaged``."""
    try:
        load_checkpoint(store, path)
        return True
    except CheckpointError as err:
        damaged.append(f"{err}; {set_aside(store, path)}: trained again")
        return False


def complete_rows(store: Store) -> tuple[list[RowFile], list[str]]:
    """The study's result files that read whole, and "path: problem" for those that do not (truncated,
    overwritten, or damaged anywhere: footer, any column chunk, any page whose checksum does not match):
    those count as not measured, so the run measures them again and replaces them. Cost: one listing plus
    one read of each file (a few KB each; 16 at a time) and its decoding."""
    files = row_files(store)
    with ThreadPoolExecutor(16) as pool:
        problems = list(pool.map(lambda f: row_file_problem(store, f), files))
    good = [f for f, problem in zip(files, problems) if problem is None]
    bad = [f"{f.path}: {problem}; measured again" for f, problem in zip(files, problems) if problem is not None]
    return good, bad


def row_file_problem(store: Store, f: RowFile) -> str | None:
    """Why the result file ``f`` cannot be trusted (one line), or None when its footer and every column chunk
    read back and every page checksum written with it (``write_row``) matches."""
    if f.size == 0:
        return "empty"
    try:
        blob = store.read_bytes(f.path)
    except OSError as err:
        return f"cannot read: {first_line(err)}"
    if len(blob) < 12 or blob[-4:] != PARQUET_MAGIC:
        return "not a complete Parquet file (truncated?)"
    try:
        table = pq.read_table(pa.BufferReader(blob), page_checksum_verification=True)
    except Exception as err:  # pyarrow raises OSError, ArrowInvalid, ... for damage in different places
        return f"damaged Parquet file ({first_line(err)})"
    return None if table.num_rows == 1 else f"{table.num_rows} rows where one was written"


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
