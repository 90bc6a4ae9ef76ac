"""``python -m raystudy.run STUDY.yaml``: plan -> launch -> measure -> report.

Runs or resumes a study: a rerun after a crash or Ctrl-C trains nothing that finished and measures
no checkpoint twice (done-ness is read from storage, not from memory). Exit 0 when every trial
finished, 1 when some failed (listed), 2 on bad input (one line naming the file and field).
"""
from __future__ import annotations

import argparse
import functools
import importlib
import os
import sys
import threading
import time
from dataclasses import dataclass

from pyarrow import ArrowException

from raystudy.cli import run_parser
from raystudy.cluster.connect import connect
from raystudy.layout import VERDICTS_FILE, checkpoint_trial, lock_file, report_path
from raystudy.lock import StudyLock, StudyLocked
from raystudy.plan import Plan, plan, still_unmeasured
from raystudy.study.preflight import preflight
from raystudy.study import StudyError, expand, load_study
from raystudy.storage import CANNOT_REACH, FENCES, first_line


def check_cluster(p: Plan, study_path: str) -> list[str]:
    """Resources the cluster can never provide are bad input (StudyError naming the field); on an
    autoscaling cluster they are warnings naming the node type that would provide them."""
    from raystudy.cluster.resources import check_resources, cluster_shape
    nodes, types = cluster_shape()
    return check_resources(p.study, study_path, nodes, types)


def say_measured(out: dict) -> str:
    """The ``[measured]`` line of one checkpoint (printed with ``-v``)."""
    bits = [f"{k}={out[k]:.4g}" for k in ("test_acc", "test_loss", "sam_sharpness", "hessian_lambda_max")
            if isinstance(out.get(k), float)]
    return (f"[measured] {out['trial_id']} epoch {out['epoch']} ({out['status']}, {out['wall_s']:.1f}s) "
            + " ".join(bits))


def work_left(p: Plan, block_of: dict[str, str]) -> dict[str, tuple[int, int]]:
    """``{block: (trials to train, checkpoints to measure)}``: every checkpoint of a trial to train (some of a
    resumed trial's may be measured already: the progress line scales them to the study's count) and each
    checkpoint on storage without a row. ``block_of``: trial id -> block."""
    left: dict[str, list[int]] = {t.block: [0, 0] for t in p.trials}
    for t in p.to_train:
        left[t.block][0] += 1
        left[t.block][1] += len(t.checkpoints)
    for path in p.to_measure:
        left.setdefault(block_of.get(checkpoint_trial(path), ""), [0, 0])[1] += 1
    return {block: (trials, checkpoints) for block, (trials, checkpoints) in left.items()}


def measuring_cost(out: dict) -> float | None:
    """What measuring one checkpoint cost, for the ETA: its CPU seconds on a CPU, its wall seconds on a GPU.
    A CPU measurer shares the cores with training at a lower priority (``cluster.measurer``), so its wall
    clock counts the time it waited as work: the smoke study's CNN checkpoints took 21 s each while trials
    ran and 8 s after, and an ETA built on the first overestimated the run by minutes. On a GPU the CPU
    clock misses the device's work, and a measurer holds its own share of the card."""
    if out.get("device") == "cpu" and out.get("cpu_s") is not None:
        return out["cpu_s"]
    return out.get("wall_s")


def since_launch() -> float:
    """Seconds since this process started (interpreter start-up and imports included: what a user waits);
    on systems without /proc, since ``raystudy.run`` was imported."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        started = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19]) / ticks
        return float(open("/proc/uptime").read().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED


_IMPORTED = time.perf_counter()
# Root URIs whose storage stopped this run unreachable: its lock is left to go stale, not deleted (see main).
UNREACHABLE: set[str] = set()


class Silent:
    """A console that prints nothing (``verbose=0``). Unlike an open file it can be pickled, as Tune pickles
    the callbacks that hold the progress line."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


@dataclass
class Outcome:
    failed: dict[str, str]  # trial id -> last line of its error
    measure_errors: list[str]  # "path: problem", one line each
    interrupted: list[str]  # trial ids a Ctrl-C stopped; a rerun resumes them
    storage: str | None = None  # the storage could not be reached mid-run: its line (the pool halted on it)


def execute(p: Plan, address: str | None = None, num_cpus: int | None = None, verbose: int = 1,
            study_path: str = "study") -> Outcome:
    """Train what is left and measure every checkpoint, through Ray. Raises StudyError, before any trial
    or measuring actor starts, when the cluster can never provide what the study asks for.

    ``verbose``: 0 prints nothing, 1 the progress line, 2 also a ``[measured]`` line per checkpoint,
    3 also Tune's own output (a status table every 30 s, every trial's configuration and result) and Ray's
    logs, 4 Tune at its most detailed."""
    import ray

    from raystudy.cluster import metrics
    from raystudy.cluster.measurer import RayMeasurers
    from raystudy.cluster.pool import MeasurePool
    from raystudy.cluster.progress import Progress
    from raystudy.faults import unreachable

    said = ray.is_initialized()  # the CLI joined its cluster and checked it before writing, and said so
    # Ray Tune and Train take ~1.5 s to import: meanwhile, starting Ray mostly waits on its processes.
    importing = threading.Thread(target=importlib.import_module, args=("raystudy.cluster.trials",), daemon=True)
    importing.start()
    try:
        joined = connect(address, num_cpus, p.study, study_path, verbose=verbose)
    finally:
        importing.join()
    from raystudy.cluster.trials import run_trials
    if verbose >= 2 and not said:
        print(f"ray: {joined}", flush=True)
    for warning in check_cluster(p, study_path):
        if not said:
            print(f"warning: {warning}", file=sys.stderr, flush=True)
    metrics.set_study(p.study.name)
    block_of = {t.trial_id: t.block for t in p.trials}
    progress = Progress(len(p.trials), sum(len(t.checkpoints) for t in p.trials),
                        trials_done=len(p.trials) - len(p.to_train), checkpoints_done=p.measured,
                        out=sys.stdout if verbose else Silent(), left=work_left(p, block_of))

    def on_result(out: dict) -> None:
        if verbose >= 2:
            progress.say(say_measured(out))
        progress.checkpoint_measured(ok=True, seconds=measuring_cost(out), block=block_of.get(out["trial_id"], ""))

    a = p.study.analysis
    held = FENCES.get(p.store.uri)
    fence = held.portable() if held is not None else None  # the lock, for the trial and measuring processes
    measurers = RayMeasurers(p.store.uri, threads=int(a.cpus), gpus=a.gpus, fence=fence)
    pool = MeasurePool(measurers, trials={t.trial_id: t.to_dict() for t in p.trials}, size=a.actors,
                       on_result=on_result, on_error=lambda line: progress.checkpoint_measured(ok=False),
                       metrics=metrics, storage_check=functools.partial(unreachable, p.store))
    failed, interrupted = {}, []
    try:
        for path in p.to_measure:
            pool.submit(path)
        if p.to_train:
            failed, interrupted = run_trials(p.to_train, p.store, pool, verbose=max(verbose - 2, 0),
                                             cap=p.study.max_concurrent_trials, max_failures=p.study.max_failures,
                                             logger_names=tuple(p.study.loggers),
                                             on_trial_end=lambda trial_id, bad, seconds: progress.trial_ended(
                                                 failed=bad, seconds=seconds, block=block_of[trial_id]),
                                             tick=progress.tick, fence=fence,
                                             on_first_start=lambda: verbose >= 2 and progress.say(
                                                 f"first trial started {since_launch():.1f}s after launch"))
        if not interrupted:  # after a Ctrl-C stop now: unmeasured checkpoints wait for the rerun
            pool.drain(progress.tick)
            # A checkpoint saved just before a trial died never reached Tune: sweep storage once more
            # (not once the storage is known unreachable: the listing would only wait out the retries).
            for path in still_unmeasured(p) if not pool.halted else []:
                pool.submit(path)
            pool.drain(progress.tick)
    finally:
        progress.close()
        pool.shutdown()
    return Outcome(failed, list(pool.errors), interrupted, storage=pool.halted)


def summarise(p: Plan, report: object) -> None:
    """The closing lines: rows on storage, the report's location, then each claim's verdict in one line,
    as the report's verdicts.json states them."""
    import json

    from raystudy.analysis.results import final_rows, load_results  # polars; not the statistics (scipy: 1.4 s)
    df = load_results(p.store)
    if not df.is_empty():
        not_ok = df.filter(df["status"] != "ok").height if "status" in df.columns else 0
        print(f"summary: {final_rows(df)['trial_id'].n_unique()} of {len(p.trials)} trials finished, {df.height} "
              f"checkpoints measured ({not_ok} not ok)", flush=True)
    print(f"report: {report}", flush=True)
    path = report_path(p.store, VERDICTS_FILE)
    if p.store.exists(path):
        for v in json.loads(p.store.read_bytes(path)):
            block = f" ({v['block']})" if v.get("block") else ""
            print(f"verdict {v['family']}{block}: {v['outcome']} - {v['claim']}", flush=True)


def dry_run(study_path: str, device_name: str | None = None) -> int:
    """Validate the study (file and preflight), print its grid, the datasets still to download and the
    training cost: measured on this machine (``device_name`` None, "cpu" or "cuda") or read from the
    throughput table's device profile (``h100``, ...). Writes nothing, starts nothing. Exit 0, or 2 on bad
    input."""
    import torch
    from raystudy.study.cost import format_cost, profile_names, study_cost
    from raystudy.data.releases import RELEASES

    profile = device_name if device_name not in (None, "cpu", "cuda") else None
    if profile and profile not in profile_names():
        print(f"--device: unknown device profile {profile!r}; known: cpu, cuda, {', '.join(profile_names())}",
              file=sys.stderr)
        return 2
    missing: list[str] = []
    try:
        study = load_study(study_path)
        preflight(study, study_path, missing=missing)
        trials = expand(study)
    except StudyError as err:
        print(err, file=sys.stderr)
        return 2
    device = torch.device(device_name if device_name in ("cpu", "cuda") else
                          "cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device here; name a profile (--device h100) to read recorded numbers",
              file=sys.stderr)
        return 2
    print(f"study {study.name}: {len(trials)} trials (dry run: nothing is started or written)", flush=True)
    for name in dict.fromkeys(missing):
        size = RELEASES[name].size if name in RELEASES else None
        print(f"dataset {name}: not downloaded yet" + (f" ({size / 1e9:.2f} GB)" if size else "")
              + f"; fetch it with: python -m raystudy.data fetch {name}", flush=True)
    print(format_cost(study_cost(trials, device, profile), device, profile), flush=True)
    return 0


def lock_lost(line: str, store=None) -> None:
    """The study's lock was deleted or taken over (this run stalled past the stale limit): stop at once with
    one line and exit 2, writing nothing more (no report, no release: the lock is someone else's now). When
    the lock went with the storage itself (bucket deleted), that is a storage fault: its line, exit 1."""
    sys.stdout.flush()
    from raystudy.faults import storage_fault
    gone = storage_fault(None, store, write=False) if store is not None else None
    print(gone or line, file=sys.stderr, flush=True)
    os._exit(1 if gone else 2)


def main(argv: list[str] | None = None) -> int:
    parser = run_parser()
    args = parser.parse_args(argv)
    args.verbosity = 0 if args.quiet else 1 + args.verbose
    t0 = time.perf_counter()
    if args.storage is not None and not args.storage.strip():  # "" would fall back to the file's storage
        print("--storage: empty: name a folder or a bucket (s3://bucket/prefix)", file=sys.stderr)
        return 2
    if args.dry_run:
        return dry_run(args.study, args.device)
    lock, stores = [], []

    def take_lock(store) -> None:  # after the checks, before anything is written or deleted
        stores.append(store)
        connect_checked(args)
        try:
            lock.append(StudyLock(store, on_lost=lambda line: lock_lost(line, store)).acquire())
        except OSError as err:  # disk full, storage unreachable: unusable storage at the start
            raise StudyLocked(f"storage: cannot take the study's lock {store.uri_of(lock_file(store))}: "
                              f"{first_line(err)}") from None
        FENCES[store.uri] = lock[-1]  # every later write of this run checks that the lock is still ours

    try:
        try:
            p = plan(args.study, fresh=args.fresh, storage=args.storage, remeasure=args.remeasure,
                     before_writing=take_lock, loggers=args.logger)
        except StudyLocked as err:
            raise StudyError(f"{args.study}: {err}") from None
        except (OSError, ArrowException) as err:  # storage unusable before anything started: bad input
            raise StudyError(f"{args.study}: {at_start(err, stores)}") from None
        return _run(p, args, t0)
    except StudyError as err:
        print(err, file=sys.stderr)
        return 2
    finally:
        for held in lock:
            FENCES.pop(held.store.uri, None)
            try:
                held.release(delete=held.store.uri not in UNREACHABLE)
            except (OSError, ArrowException):  # storage gone: a lock left behind goes stale by itself
                pass


def at_start(err: BaseException, stores: list) -> str:
    """The one line for a storage error met while planning (a listing, a read, a write after the lock)."""
    from raystudy.faults import storage_fault
    return (storage_fault(err, stores[0]) if stores else None) or f"storage: {first_line(err)}"


def storage_stop(err: BaseException | None, p: Plan) -> int | None:
    """Exit 1 with one line when the storage failed mid-run (``err``, or a failed trial or measurement, was
    the storage's doing); None when it was not."""
    from raystudy.faults import storage_fault
    if isinstance(err, (StudyError, KeyboardInterrupt)):
        return None
    line = storage_fault(err, p.store)
    return None if line is None else stop_on(line, p)


def stop_on(line: str, p: Plan) -> int:
    """Print the storage's one line and return exit code 1; an unreachable store's lock is left to go stale."""
    print(line, file=sys.stderr, flush=True)
    if CANNOT_REACH in line:  # deleting the lock would wait out the client's retries, then fail
        UNREACHABLE.add(p.store.uri)
    return 1


def connect_checked(args: argparse.Namespace) -> None:
    """Before anything is written: join the cluster the run is asked to use (``--address``, ``RAY_ADDRESS``, a
    ``ray start`` cluster here) and check it can hold the study, or, for a local instance, check this
    machine's resources without starting Ray (``execute`` starts it only if there is work: a rerun with
    nothing to do starts none). An unreachable address, a SIGTERM meanwhile or resources that can never be
    had leave no study.yaml and no lock behind. StudyError (exit 2) on failure."""
    from raystudy.cluster.connect import check_local, will_join
    from raystudy.cluster.resources import check_resources, cluster_shape
    study = load_study(args.study)  # validated already by plan(); read again, it is cheap
    if not will_join(args.address):
        check_local(study, args.study, args.num_cpus)
        return
    joined = connect(args.address, args.num_cpus, study, args.study, verbose=args.verbosity)
    if args.verbosity >= 2:
        print(f"ray: {joined}", flush=True)
    for warning in check_resources(study, args.study, *cluster_shape()):
        print(f"warning: {warning}", file=sys.stderr, flush=True)


def _run(p: Plan, args: argparse.Namespace, t0: float) -> int:
    say = print if args.verbosity else (lambda *a, **k: None)
    say(f"study {p.study.name}: {len(p.trials)} trials, {len(p.to_train)} to train, "
        f"{len(p.to_measure)} checkpoints to measure first -> {p.store.uri}", flush=True)
    for line in p.damaged:
        print(f"damaged: {line}", file=sys.stderr, flush=True)
    if p.to_train or p.to_measure:
        try:
            out = execute(p, args.address, args.num_cpus, verbose=args.verbosity, study_path=args.study)
        except KeyboardInterrupt:
            out = Outcome({}, [], ["(driver)"])
        except Exception as err:
            if (code := storage_stop(err, p)) is None:
                raise
            return code
    else:  # nothing to train or measure: no Ray at all
        out = Outcome({}, [], [])
    if out.storage:  # the pool halted on unreachable storage: its line alone (what it left, a rerun measures)
        return stop_on(out.storage, p)
    if out.interrupted:
        print(f"interrupted: {len(out.interrupted)} trials unfinished; rerun the same command to resume",
              file=sys.stderr)
        return 130
    if (out.failed or out.measure_errors) and (code := storage_stop(None, p)) is not None:
        return code  # one line for the storage, not one per trial it failed
    try:
        return _finish(p, args, t0, out)
    except Exception as err:
        if (code := storage_stop(err, p)) is None:
            raise
        return code


def _finish(p: Plan, args: argparse.Namespace, t0: float, out: Outcome) -> int:
    """The report (unless one built from these rows is there), the failures, then the closing lines."""
    report = None
    if not args.no_report:
        from raystudy.analysis.freshness import report_is_current
        from raystudy.report import build_report
        if out.failed or out.measure_errors or not report_is_current(p.store, pngs=args.png):
            report = build_report(p.store.uri, pngs=args.png)
        else:  # a report built from exactly these rows (and this study file), with any PNGs asked for, is there
            report = f"{p.store.uri_of(report_path(p.store, 'index.html'))} (current: built from these rows)"
    for tid, err in out.failed.items():
        print(f"failed: {tid}: {err}", file=sys.stderr)
    for err in out.measure_errors:
        print(f"not measured: {err}", file=sys.stderr)
    print(f"done in {time.perf_counter() - t0:.0f}s", flush=True)
    if report is not None:  # the answer last: where the report is, and the verdicts
        summarise(p, report)
    if any("corrupt checkpoint" in e for e in out.measure_errors):
        return 2
    return 1 if out.failed or out.measure_errors else 0


if __name__ == "__main__":
    from raystudy.cli import exit_fast
    exit_fast(main())
