"""``python -m raystudy.run STUDY.yaml``: plan -> launch -> measure -> report.

Runs or resumes a study: a rerun after a crash or Ctrl-C trains nothing that finished and measures
no checkpoint twice (done-ness is read from storage, not from memory). Exit 0 when every trial
finished, 1 when some failed (listed), 2 on bad input (one line naming the file and field).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

from raystudy.cluster.connect import connect
from raystudy.lock import StudyLock, StudyLocked
from raystudy.plan import Plan, plan, still_unmeasured
from raystudy.preflight import preflight
from raystudy.spec import StudyError, expand, load_study


def check_cluster(p: Plan, study_path: str) -> list[str]:
    """Resources the cluster can never provide are bad input (StudyError naming the field); on an
    autoscaling cluster they are warnings naming the node type that would provide them."""
    from raystudy.cluster.resources import check_resources, cluster_shape
    nodes, types = cluster_shape()
    return check_resources(p.study, study_path, nodes, types)


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


def execute(p: Plan, address: str | None = None, num_cpus: int | None = None, verbose: int = 1,
            study_path: str = "study") -> Outcome:
    """Train what is left and measure every checkpoint, through Ray. Raises StudyError, before any trial
    or measuring actor starts, when the cluster can never provide what the study asks for."""
    import ray

    from raystudy.cluster import metrics
    from raystudy.cluster.pool import MeasurePool
    from raystudy.cluster.trials import run_trials

    said = ray.is_initialized()  # the CLI connected and checked before writing anything, and said so
    joined = connect(address, num_cpus, p.study, study_path)
    if verbose and not said:
        print(f"ray: {joined}", flush=True)
    for warning in check_cluster(p, study_path):
        if not said:
            print(f"warning: {warning}", file=sys.stderr, flush=True)
    metrics.set_study(p.study.name)
    a = p.study.analysis
    pool = MeasurePool(p.store.uri, trials={t.trial_id: t.to_dict() for t in p.trials}, size=a.actors,
                       cpus=a.cpus, gpus=a.gpus)
    failed, interrupted = {}, []
    try:
        for path in p.to_measure:
            pool.submit(path)
        if p.to_train:
            failed, interrupted = run_trials(p.to_train, p.store, pool, say_measured, verbose=verbose,
                                             cap=p.study.max_concurrent_trials, max_failures=p.study.max_failures,
                                             logger_names=tuple(p.study.loggers))
        if not interrupted:  # after a Ctrl-C stop now: unmeasured checkpoints wait for the rerun
            pool.drain(say_measured)
            # A checkpoint saved just before a trial died never reached Tune: sweep storage once more.
            for path in still_unmeasured(p):
                pool.submit(path)
            pool.drain(say_measured)
    finally:
        pool.shutdown()
    return Outcome(failed, list(pool.errors), interrupted)


def summarise(p: Plan) -> None:
    """The closing summary: rows on storage, and each claim's verdict in one line, as the report's
    verdicts.json states them (written by the report just built)."""
    import json

    from raystudy.analysis.judge import VERDICTS_FILE
    from raystudy.analysis.results import final_rows, load_results
    df = load_results(p.store)
    if df.is_empty():
        return
    not_ok = df.filter(df["status"] != "ok").height if "status" in df.columns else 0
    print(f"summary: {final_rows(df)['trial_id'].n_unique()} of {len(p.trials)} trials finished, {df.height} "
          f"checkpoints measured ({not_ok} not ok)", flush=True)
    path = f"{p.store.path('report')}/{VERDICTS_FILE}"
    if p.store.exists(path):
        for v in json.loads(p.store.read_bytes(path)):
            block = f" ({v['block']})" if v.get("block") else ""
            print(f"verdict {v['family']}{block}: {v['outcome']} - {v['claim']}", flush=True)


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
    parser.add_argument("--remeasure", action="store_true",
                        help="measure every checkpoint again (changed measurement settings re-measure by themselves)")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, a cluster `ray start` runs "
                                          "here, or a new local instance)")
    parser.add_argument("--num-cpus", type=int, help="CPUs for a newly started local Ray instance")
    parser.add_argument("--no-report", action="store_true", help="skip building the report")
    parser.add_argument("--logger", action="append", default=[], choices=["tensorboard", "mlflow", "wandb"],
                        help="also send Tune's per-epoch results here (repeatable; adds to the study's loggers)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the grid and an estimate of training device-hours; start nothing")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    if args.storage is not None and not args.storage.strip():  # "" would fall back to the file's storage
        print("--storage: empty: name a folder or a bucket (s3://bucket/prefix)", file=sys.stderr)
        return 2
    if args.dry_run:
        return dry_run(args.study)
    lock = []

    def take_lock(store) -> None:  # after the checks, before anything is written or deleted
        connect_checked(args)
        lock.append(StudyLock(store).acquire())

    try:
        try:
            p = plan(args.study, fresh=args.fresh, storage=args.storage, remeasure=args.remeasure,
                     before_writing=take_lock, loggers=args.logger)
        except StudyLocked as err:
            raise StudyError(f"{args.study}: {err}") from None
        return _run(p, args, t0)
    except StudyError as err:
        print(err, file=sys.stderr)
        return 2
    finally:
        for held in lock:
            held.release()


def connect_checked(args: argparse.Namespace) -> None:
    """Connect to Ray (or start it) and check the cluster can hold the study, before anything is written:
    an unreachable address, a SIGTERM meanwhile or resources the cluster never has leave no study.yaml
    and no lock behind. StudyError (exit 2) on failure."""
    from raystudy.cluster.resources import check_resources, cluster_shape
    study = load_study(args.study)  # validated already by plan(); read again, it is cheap
    print(f"ray: {connect(args.address, args.num_cpus, study, args.study)}", flush=True)
    for warning in check_resources(study, args.study, *cluster_shape()):
        print(f"warning: {warning}", file=sys.stderr, flush=True)


def _run(p: Plan, args: argparse.Namespace, t0: float) -> int:
    print(f"study {p.study.name}: {len(p.trials)} trials, {len(p.to_train)} to train, "
          f"{len(p.to_measure)} checkpoints to measure first -> {p.store.uri}", flush=True)
    for line in p.damaged:
        print(f"damaged result: {line}", file=sys.stderr, flush=True)
    try:
        out = execute(p, args.address, args.num_cpus, study_path=args.study)
    except KeyboardInterrupt:
        out = Outcome({}, [], ["(driver)"])
    if out.interrupted:
        print(f"interrupted: {len(out.interrupted)} trials unfinished; rerun the same command to resume",
              file=sys.stderr)
        return 130
    if not args.no_report:
        from raystudy.report import build_report
        print(f"report: {build_report(p.store.uri)}")
        summarise(p)
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
