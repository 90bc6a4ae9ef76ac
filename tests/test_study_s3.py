"""The test study end to end in a bucket (moto's S3 API on 127.0.0.1): Tune trials, Train, the analysis actor
pool, Parquet rows, Tune/Train state and the report all in object storage, nothing on the local disk; Ctrl-C
mid-study and a rerun that resumes from the bucket without redoing anything."""
from __future__ import annotations

import re
import os
import signal
import time

import pytest

from raystudy.analysis.results import load_results
from raystudy.report import build_report
from raystudy.study import expand, load_study
from raystudy.storage import Store
from support.ray_procs import local_ray
from support.s3_server import s3_bucket
from support.studies import expected_rows, finish, start_cli, tiny_block, tiny_study

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    """One bucket and one Ray session for the module. AWS_* is set before ray.init, so the actor pool and
    the Tune trial processes inherit the endpoint and keys."""
    with s3_bucket() as bucket, local_ray(dashboard=True) as address:
        yield bucket, address


# A trial trained by a real Train worker: only then does Ray Train keep a run (state, a validation marker)
# in storage; local mode (workers: 0) runs inside the Tune trial and writes nothing of its own. The worker
# needs a whole CPU beside the trial driver's token one, so the analysis actor must hold less than one.
WORKERS = tiny_block(name="workers", lr=0.01, epochs=2, checkpoints=[0, 2], sharpness={"rhos": [0.005], "draws": 5},
                     resources={"cpus": 1, "workers": 1})


def test_study_in_a_bucket_interrupted_then_resumed(tmp_path, cluster, monkeypatch):
    """One study, three runs of the CLI (each its own lock, plan and Tune experiment on the bucket): Ctrl-C lands
    mid-study, the rerun finishes it without retraining a checkpoint, and a third run finds nothing to do."""
    bucket, address = cluster
    monkeypatch.chdir(tmp_path)  # anything written locally by mistake would land here (the CLI runs here too)
    path = tiny_study(tmp_path, "s3e2e", storage=f"{bucket}/runs", blocks=("digits",), extra=(WORKERS,),
                      analysis={"actors": 1, "cpus": 0.5})
    store = Store(f"{bucket}/runs/s3e2e")
    ckpts = store.path("checkpoints")

    def stored() -> dict[str, int]:
        return {i.path: i.mtime_ns for i in store.files(ckpts, ".pt", recursive=True)}

    proc = start_cli(path, address, cwd=tmp_path)
    deadline = time.time() + 240
    while time.time() < deadline and len(stored()) < 4:
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)  # Ctrl-C mid-study
    log = finish(proc, 240)
    assert proc.returncode == 130, log
    before = stored()
    assert 0 < len(before) < len(expected_rows(path)), "the interrupt should land mid-study"

    rerun = start_cli(path, address, cwd=tmp_path)
    log = finish(rerun, 300)
    assert rerun.returncode == 0, log
    after = stored()
    assert all(after[f] == t for f, t in before.items()), "a finished checkpoint was retrained"
    df = load_results(store)
    assert set(zip(df["trial_id"], df["epoch"])) == expected_rows(path) and df.height == len(expected_rows(path))
    assert (df["status"] == "ok").all()
    trials = expand(load_study(path))
    assert store.read_bytes(store.path("study.yaml")) == path.read_bytes()
    assert store.list_dirs(ckpts) == sorted(t.trial_id for t in trials)
    # Tune's experiment state and the Train run of the trial with a real worker live in the bucket too.
    tune_state = [f.rsplit("/", 1)[1] for f in store.list(store.path("ray", "tune"))]
    assert any(f.startswith("experiment_state") for f in tune_state), tune_state
    assert store.list_dirs(store.path("ray", "train")) == [t.trial_id for t in trials if t.block == "workers"]

    again = start_cli(path, address, cwd=tmp_path)  # a third run finds nothing to do
    log = finish(again, 120)
    assert again.returncode == 0 and "0 to train, 0 checkpoints to measure" in log, log

    index = build_report(store.uri)
    assert index == f"{bucket}/runs/s3e2e/report/index.html"
    pngs = store.list(store.path("report"), ".png")
    html = store.read_bytes(store.path("report", "index.html")).decode()
    assert html.count("<figure>") >= 2 and not pngs and re.search(r"<script[^>]*\bsrc=", html) is None  # none asked
    logs = {p.log.name for p in (proc, rerun, again)}
    assert set(os.listdir(tmp_path)) == {path.name} | logs  # nothing else on the local disk
