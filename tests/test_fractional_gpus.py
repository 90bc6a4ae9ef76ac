"""Fractional GPUs through Ray's logical resources: four `gpus: 0.25` trials share one (logical) GPU and
train at the same time; the measuring pool takes its own share."""
import threading
import time

import polars as pl
import pytest
import ray

from raystudy.plan import plan
from raystudy.run import execute

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gpu_cluster():
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_four_quarter_gpu_trials_run_at_once(tmp_path, gpu_cluster):
    path = tmp_path / "quarters.yaml"
    path.write_text(f"""
name: quarters
storage: {tmp_path}/runs
analysis: {{actors: 1, cpus: 0.25, gpus: 0}}
blocks:
  - name: c
    family: circles
    task: circles
    factor: [0.3, 0.7]
    model: mlp
    model_args: {{hidden: [16, 16]}}
    seed: [0, 1]
    lr: 0.05
    batch_size: 5
    epochs: 20
    sharpness: {{rhos: [0.01], draws: 3}}
    resources: {{cpus: 0.25, gpus: 0.25}}
""")
    free, done = [], threading.Event()

    def watch() -> None:  # what Ray has left of the one GPU while the study runs
        while not done.is_set():
            free.append(ray.available_resources().get("GPU", 0.0))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    p = plan(str(path))
    try:
        out = execute(p, verbose=0)
    finally:
        done.set()
        watcher.join(timeout=5)
    assert not out.failed and not out.measure_errors
    # Four quarter shares reserved at the same time: nothing of the GPU left at some moment, never overdrawn.
    assert min(free) == pytest.approx(0.0, abs=1e-6) and max(free) <= 1.0
    assert pl.read_parquet(f"{p.store.root}/results/**/*.parquet").height == 4
