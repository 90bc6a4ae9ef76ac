"""Faults during training, through real Ray and the real driver (``raystudy.run.plan``/``execute``):
a trial whose process is killed resumes from its resume point within the same run; a trial that
diverges is a result (status ``nonfinite``), not a failure."""
from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
import torch

from support.ray_procs import find_worker, local_ray, raylet_pid
from support.studies import function_block, tiny_block, write_study_yaml
from raystudy.checkpoints import CheckpointError, list_checkpoints, load_checkpoint, resume_path
from raystudy.run import execute, plan
from raystudy.study import expand, load_study

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[int]:
    """A private Ray instance; yields its raylet's pid (trial processes are the raylet's children)."""
    with local_ray():
        yield raylet_pid()


def _study(tmp_path: Path, name: str, block: dict) -> Path:
    return write_study_yaml(tmp_path, name, block, analysis={"actors": 1, "cpus": 0.5})


def _rows(p) -> pl.DataFrame:
    return pl.scan_parquet(f"{p.store.root}/results/**/*.parquet").collect()


def test_killed_trial_resumes_from_its_resume_point(tmp_path, cluster):
    path = _study(tmp_path, "kill", tiny_block(lr=0.01, epochs=3000, checkpoints=[0],
                                               resume_every={"epochs": 50, "minutes": None},
                                               sharpness={"rhos": [0.005], "draws": 5}))
    p = plan(str(path))
    (trial,) = p.trials
    resume = Path(resume_path(p.store, trial.trial_id))
    seen: dict[str, int] = {}

    def kill_once_a_resume_point_exists() -> None:
        deadline = time.time() + 300
        pid = find_worker(b"ray::ImplicitFunc", cluster, deadline)  # in local mode (workers: 0) it trains
        while time.time() < deadline:
            if resume.exists():
                try:
                    seen["epoch"] = load_checkpoint(p.store, str(resume))["epoch"]
                except CheckpointError:  # replaced between the check and the read (rename): look again
                    continue
                os.kill(pid, signal.SIGKILL)
                seen["pid"] = pid
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_once_a_resume_point_exists, daemon=True)
    killer.start()
    out = execute(p, verbose=0)
    killer.join(timeout=5)
    assert seen.get("pid") and seen["epoch"] > 0, "the kill should land after a resume point, mid-training"
    assert not out.failed and not out.measure_errors and not out.interrupted  # exit 0
    final = load_checkpoint(p.store, list_checkpoints(p.store, trial.trial_id)[-1].path)
    assert final["epoch"] == 3000 and final["resumed_from"] >= seen["epoch"] > 0  # not restarted from epoch 0
    assert not resume.exists()  # superseded by the last checkpoint
    df = _rows(p)
    assert sorted(zip(df["trial_id"], df["epoch"])) == [(trial.trial_id, 0), (trial.trial_id, 3000)]
    assert (df["status"] == "ok").all()


def test_diverging_trial_is_a_result_not_a_failure(tmp_path, cluster):
    path = _study(tmp_path, "diverge", function_block(
        name="f", optimizer="sgd",
        lr=[100.0, 0.01],  # the top of the documented range (raystudy/study/bounds.py) diverges here
        epochs=20, checkpoints=[5], metrics=["sam_sharpness", "hessian"], sharpness={"rhos": [0.005], "draws": 5},
        hessian={"top_k": 1, "trace_hvp": 3, "density_runs": 1, "density_steps": 4}))
    p = plan(str(path))
    out = execute(p, verbose=0)
    assert not out.failed and not out.measure_errors and not out.interrupted  # exit 0
    df = _rows(p)
    assert sorted(zip(df["lr"], df["epoch"])) == [(0.01, 5), (0.01, 20), (100.0, 5), (100.0, 20)]
    bad, good = df.filter(pl.col("lr") == 100.0), df.filter(pl.col("lr") == 0.01)
    assert (bad["status"] == "nonfinite").all() and bad["sam_sharpness"].null_count() == bad.height
    assert bad["hessian_lambda_max"].null_count() == bad.height  # not measured on non-finite weights
    assert (good["status"] == "ok").all() and good["sam_sharpness"].null_count() == 0
    assert good["hessian_lambda_max"].null_count() == 0
    diverged = next(t for t in expand(load_study(path)) if t.lr == 100.0)
    at5, at20 = (load_checkpoint(p.store, c.path) for c in list_checkpoints(p.store, diverged.trial_id))
    assert (at5["epoch"], at20["epoch"]) == (5, 20)
    assert isinstance(at20["diverged_at"], int) and 1 <= at20["diverged_at"] <= 5  # diverged before epoch 5
    # Training stopped there: the later checkpoint holds exactly the (non-finite) weights of the earlier one.
    torch.testing.assert_close(at20["model"], at5["model"], rtol=0, atol=0, equal_nan=True)
    assert not all(torch.isfinite(v).all() for v in at20["model"].values() if v.is_floating_point())
