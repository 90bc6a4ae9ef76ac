"""``python -m raystudy.run STUDY.yaml``: plan -> launch -> measure -> report.

Runs or resumes a study: a rerun after a crash or Ctrl-C trains nothing that finished and measures
no checkpoint twice (done-ness is read from storage, not from memory). Exit 0 when every trial
finished, 1 when some failed (listed), 2 on bad input (one line naming the file and field).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

from raystudy.checkpoints import CheckpointError, list_checkpoints, load_checkpoint
from raystudy.preflight import preflight
from raystudy.spec import Study, StudyError, Trial, expand, load_study
from raystudy.storage import Store, StorageError, first_line, study_store


@dataclass
class Plan:
    study: Study
    trials: list[Trial]
    store: Store
    to_train: list[Trial]  # not every checkpoint exists yet
    to_measure: list[str]  # checkpoints on storage without a result row


def plan(study_path: str, fresh: bool = False, storage: str | None = None) -> Plan:
    """Read the study and storage; decide what is left to do. Raises StudyError on bad input,
    including a corrupt checkpoint a resumed trial or the pool would have to read."""
    from raystudy.measure import measured

    study = load_study(study_path)
    if storage:
        study = study.model_copy(update={"storage": storage})
    preflight(study, study_path)
    trials = expand(study)
    where = "--storage" if storage else f"{study_path}: storage"
    try:  # before anything starts or is written: a bad location is bad input, not a crash mid-run
        store = study_store(study.storage, study.name)
    except StorageError as err:
        raise StudyError(f"{where}: {err}") from None
    try:
        if fresh:  # the study's own subfolders only (delete_dir refuses anything outside its root)
            for sub in ("checkpoints", "results", "ray", "report"):
                store.delete_dir(store.path(sub))
        store.write_bytes(store.path("study.yaml"), open(study_path, "rb").read())
    except OSError as err:
        raise StudyError(f"{where}: {study.storage}: cannot write {store.uri}: {first_line(err)}") from None
    done = measured(store)
    to_train, to_measure = [], []
    for t in trials:
        on_disk = list_checkpoints(store, t.trial_id)
        epochs = {r.epoch for r in on_disk}
        unmeasured = _unmeasured(on_disk, done)
        # Read what will be read anyway, up front: a corrupt file is bad input, reported before
        # anything starts rather than as a failure deep inside a trial.
        check = set(unmeasured) | ({on_disk[-1].path} if on_disk and not set(t.checkpoints) <= epochs else set())
        for path in sorted(check):
            try:
                load_checkpoint(store, path)
            except CheckpointError as err:
                raise StudyError(f"{err}; delete it to redo that checkpoint") from None
        to_measure += unmeasured
        if not set(t.checkpoints) <= epochs:
            to_train.append(t)
    return Plan(study, trials, store, to_train, to_measure)


def connect(address: str | None, num_cpus: int | None) -> None:
    """Join a running cluster (``--address``, ``RAY_ADDRESS`` or a local ``ray start``), else start
    a local Ray instance."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    try:
        ray.init(address="auto", log_to_driver=True)
    except ConnectionError:
        ray.init(num_cpus=num_cpus, log_to_driver=True)


def say_measured(out: dict) -> None:
    bits = [f"{k}={out[k]:.4g}" for k in ("test_acc", "test_loss", "sam_sharpness", "hessian_lambda_max")
            if isinstance(out.get(k), float)]
    print(f"[measured] {out['trial_id']} epoch {out['epoch']} ({out['status']}, {out['wall_s']:.1f}s) "
          + " ".join(bits), flush=True)


@dataclass
class Outcome:
    failed: dict[str, str]  # trial id -> last line of its error
    measure_errors: list[str]  # "path: problem", one line each
    interrupted: list[str]  # trial ids a Ctrl-C stopped; a rerun resumes them


def execute(p: Plan, address: str | None = None, num_cpus: int | None = None, verbose: int = 1) -> Outcome:
    """Train what is left and measure every checkpoint, through Ray."""
    from raystudy.cluster import metrics
    from raystudy.cluster.pool import MeasurePool
    from raystudy.cluster.trials import run_trials

    connect(address, num_cpus)
    metrics.set_study(p.study.name)
    a = p.study.analysis
    pool = MeasurePool(p.store.uri, size=a.actors, cpus=a.cpus, gpus=a.gpus)
    failed, interrupted = {}, []
    try:
        for path in p.to_measure:
            pool.submit(path)
        if p.to_train:
            failed, interrupted = run_trials(p.to_train, p.store, pool, say_measured, verbose=verbose,
                                             cap=p.study.max_concurrent_trials)
        if not interrupted:  # after a Ctrl-C stop now: unmeasured checkpoints wait for the rerun
            pool.drain(say_measured)
            # A checkpoint saved just before a trial died never reached Tune: sweep storage once more.
            for path in plan_unmeasured(p):
                pool.submit(path)
            pool.drain(say_measured)
    finally:
        pool.shutdown()
    return Outcome(failed, list(pool.errors), interrupted)


def _unmeasured(refs: list, done: set[tuple[str, int]]) -> list[str]:
    """Paths of the checkpoints in ``refs`` that have no result row yet."""
    return [r.path for r in refs if (r.trial_id, r.epoch) not in done]


def plan_unmeasured(p: Plan) -> list[str]:
    from raystudy.measure import measured
    done = measured(p.store)
    return [path for t in p.trials for path in _unmeasured(list_checkpoints(p.store, t.trial_id), done)]


def dry_run(study_path: str) -> int:
    """Validate the study (file and preflight), print its grid and the training cost measured on this
    machine's device; write nothing, start nothing. Exit 0, or 2 on bad input."""
    import torch
    from raystudy.cost import format_cost, study_cost

    try:
        study = load_study(study_path)
        preflight(study, study_path)
        trials = expand(study)
    except StudyError as err:
        print(err, file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"study {study.name}: {len(trials)} trials (dry run: nothing is started or written)", flush=True)
    print(format_cost(study_cost(trials, device), device), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raystudy.run", description=__doc__.splitlines()[0])
    parser.add_argument("study", help="study YAML file")
    parser.add_argument("--storage", help="store results here instead of the study file's storage")
    parser.add_argument("--fresh", action="store_true", help="delete this study's results and start over")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, a running local cluster, or a new one)")
    parser.add_argument("--num-cpus", type=int, help="CPUs for a newly started local Ray instance")
    parser.add_argument("--no-report", action="store_true", help="skip building the report")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the grid and an estimate of training device-hours; start nothing")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    if args.dry_run:
        return dry_run(args.study)
    try:
        p = plan(args.study, fresh=args.fresh, storage=args.storage)
    except StudyError as err:
        print(err, file=sys.stderr)
        return 2
    print(f"study {p.study.name}: {len(p.trials)} trials, {len(p.to_train)} to train, "
          f"{len(p.to_measure)} checkpoints to measure first -> {p.store.uri}", flush=True)
    try:
        out = execute(p, args.address, args.num_cpus)
    except KeyboardInterrupt:
        out = Outcome({}, [], ["(driver)"])
    if out.interrupted:
        print(f"interrupted: {len(out.interrupted)} trials unfinished; rerun the same command to resume",
              file=sys.stderr)
        return 130
    if not args.no_report:
        from raystudy.report import build_report
        print(f"report: {build_report(p.store.uri)}")
    print(f"done in {time.perf_counter() - t0:.0f}s", flush=True)
    for tid, err in out.failed.items():
        print(f"failed: {tid}: {err}", file=sys.stderr)
    for err in out.measure_errors:
        print(f"not measured: {err}", file=sys.stderr)
    if any("corrupt checkpoint" in e for e in out.measure_errors):
        return 2
    return 1 if out.failed or out.measure_errors else 0

if __name__ == "__main__":
    sys.exit(main())
