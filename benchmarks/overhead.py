"""What does Ray cost? The smoke study's trials (a) through ``raystudy.run``, (b) in as many plain Python
processes as Ray has slots (a ``multiprocessing`` pool, each process training a trial and measuring its
checkpoints, the next trial to the first process free: what one would write without Ray), and with
``--sequential`` (c) one after another in this process, with the same training and metric code. Prints the walls and

    ratio = wall(raystudy) / wall(the same trials in `slots` plain processes)

the goal on a 2-core machine being <= 1.3: 1.0 means Ray costs nothing over the same parallelism without it.
With ``--sequential`` also wall(raystudy) / (wall(sequential) / slots), which charges Ray for the hardware too:
two vCPUs that share a core give less than twice one. Also prints the seconds from launching ``raystudy.run``
to its first trial's process starting (goal <= 15 s).

    uv run python benchmarks/overhead.py [--study studies/smoke.yaml] [--slots 2] [--sequential]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import torch


def _trial_then_its_checkpoints(job: tuple[dict, str]) -> int:
    """One trial (``Trial.to_dict``, store URI) trained, then each of its checkpoints measured, on one thread,
    as a Ray trial or measuring actor with cpus: 1 runs. Returns the checkpoints measured."""
    from raystudy.measure import measure_checkpoint, write_row
    from raystudy.storage import Store
    from raystudy.train.loop import train_trial
    from raystudy.trial import Trial

    torch.set_num_threads(1)
    trial, store = Trial.from_dict(job[0]), Store(job[1])
    paths: list[str] = []
    train_trial(trial, store, report=lambda info: "checkpoint" in info and paths.append(info["checkpoint"]))
    for path in paths:
        write_row(store, measure_checkpoint(store, path))
    return len(paths)


def in_process(study_path: str, storage: str) -> tuple[float, int, int]:
    """Train and measure every trial sequentially, no Ray. Returns (wall s, trials, checkpoints)."""
    from raystudy.run import plan

    t0 = time.perf_counter()
    p = plan(study_path, fresh=True, storage=storage)
    n = sum(_trial_then_its_checkpoints((t.to_dict(), p.store.uri)) for t in p.trials)
    return time.perf_counter() - t0, len(p.trials), n


def in_parallel(study_path: str, storage: str, slots: int) -> tuple[float, int, int]:
    """The same trials in ``slots`` fresh Python processes (spawned: each imports torch, as Ray's workers do),
    handed out one at a time in the study's order as processes free up. Returns (wall s, trials, checkpoints)."""
    import multiprocessing

    from raystudy.run import plan

    t0 = time.perf_counter()
    p = plan(study_path, fresh=True, storage=storage)
    jobs = [(t.to_dict(), p.store.uri) for t in p.trials]
    with multiprocessing.get_context("spawn").Pool(slots) as pool:
        n = sum(pool.imap_unordered(_trial_then_its_checkpoints, jobs, chunksize=1))
    return time.perf_counter() - t0, len(p.trials), n


def through_ray(study_path: str, storage: str, slots: int) -> tuple[float, float | None]:
    """The real command, Ray start-up and shutdown included, as a researcher runs it. Returns (wall s,
    seconds from launch to the first trial's start, as the run's ``-v`` line says)."""
    cmd = [sys.executable, "-m", "raystudy.run", study_path, "--fresh", "--no-report", "-v",
           "--storage", storage, "--num-cpus", str(slots)]
    env = {**os.environ, "RAY_ADDRESS": ""}  # a fresh local instance, not someone's cluster
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, env=env, stdout=subprocess.PIPE, text=True).stdout
    first = re.search(r"first trial started ([0-9.]+)s after launch", out)
    return time.perf_counter() - t0, float(first.group(1)) if first else None


def bare_tune_per_trial(slots: int = 2) -> float:
    """Seconds Ray Tune and Train add per trial and slot here: the difference between 4 and 28 trials that
    train nothing (each a Tune function trial running a local-mode ``TorchTrainer``, as raystudy's do;
    actors reused) in one Ray instance, so Ray's and the actors' start-up cancel out. A first experiment of
    2 trials warms the instance up: without it the 4 paid the first fit's one-off costs (its imports, the
    cluster's first worker processes) and the difference came out negative."""
    code = f"""
import time, ray
from ray import train, tune
from ray.train.torch import TorchTrainer
ray.init(num_cpus={slots}, log_to_driver=False)
def trial(config):
    TorchTrainer(lambda c: tune.report({{"x": 1}}), scaling_config=train.ScalingConfig(num_workers=0),
                 run_config=train.RunConfig(name=f"t{{config['i']}}", storage_path="/tmp/raystudy-bare-train")).fit()
def fit(n, name):
    t0 = time.perf_counter()
    tune.Tuner(tune.with_resources(trial, {{"CPU": 1}}),
               param_space={{"i": tune.grid_search(list(range(n)))}},
               tune_config=tune.TuneConfig(reuse_actors=True),
               run_config=tune.RunConfig(name=name, storage_path="/tmp/raystudy-bare-tune", verbose=0)).fit()
    return time.perf_counter() - t0
fit(2, "warm-up")
few, many = fit(4, "few"), fit(28, "many")
print((many - few) * {slots} / 24)
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         env={**os.environ, "RAY_ADDRESS": ""})
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default="studies/smoke.yaml")
    ap.add_argument("--slots", type=int, default=os.cpu_count())
    ap.add_argument("--sequential", action="store_true", help="also run the trials one after another here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wall_par, trials, n = in_parallel(args.study, f"{tmp}/par", args.slots)
        wall_ray, first = through_ray(args.study, f"{tmp}/ray", args.slots)
        wall_seq = in_process(args.study, f"{tmp}/seq")[0] if args.sequential else None
    bare = bare_tune_per_trial(slots=args.slots)
    print(f"study {args.study}: {trials} trials, {n} checkpoints")
    print(f"{args.slots} plain processes:   {wall_par:7.1f} s")
    print(f"raystudy.run (Ray):    {wall_ray:7.1f} s   ({args.slots} slots)")
    if wall_seq is not None:
        print(f"in-process sequential: {wall_seq:7.1f} s   (the {args.slots} processes ran "
              f"{wall_seq / wall_par:.2f}x as fast)")
    print(f"launch to first trial started: {first if first is None else f'{first:.1f} s'}   (goal <= 15 s)")
    print(f"Ray Tune + Train alone, per extra trial and slot (trials that train nothing, start-up excluded): "
          f"{bare:.2f} s")
    print(f"ratio wall(raystudy) / wall({args.slots} plain processes) = {wall_ray / wall_par:.2f}   (goal <= 1.3)")
    if wall_seq is not None:
        print(f"ratio wall(raystudy) / (wall(in-process) / {args.slots}) = {wall_ray / (wall_seq / args.slots):.2f}"
              f"   (Ray charged for the hardware's parallel speed-up too)")


if __name__ == "__main__":
    main()
