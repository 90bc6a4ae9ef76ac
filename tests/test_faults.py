"""Faults done to a running study, through real Ray: nothing finished is redone, nothing is lost, and what
cannot go on says so in one line (issue 8, part 3: b, c, e, f, g; the training-side a and d are in
tests/test_faults_training.py)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest

from support.ray_procs import find_worker, local_ray, raylet_pid
from support.studies import expected_rows, finish, start_cli, tiny_block, write_study_yaml
from raystudy.plan import plan
from raystudy.run import execute

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    with local_ray() as address:
        yield address


def _study(tmp_path: Path, name: str, epochs: int = 6, checkpoints=(2, 4, 6), metrics=("sam_sharpness",)) -> Path:
    block = tiny_block(factor=0.4, seed=[0, 1], shuffle_seed=0, epochs=epochs, checkpoints=list(checkpoints),
                       metrics=list(metrics), sharpness={"rhos": [0.01], "draws": 5})
    return write_study_yaml(tmp_path, name, block, analysis={"actors": 1, "cpus": 0.5})


def _rows(tmp_path: Path, name: str) -> pl.DataFrame:
    return pl.read_parquet(f"{tmp_path}/runs/{name}/results/**/*.parquet")


def _mtimes(tmp_path: Path, name: str, pattern: str) -> dict[Path, int]:
    return {f: f.stat().st_mtime_ns for f in (tmp_path / "runs" / name).glob(pattern)}


def _wait_for(predicate, timeout: float = 240, poll: float = 0.2, log: Path | None = None) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out" + (f"; the driver printed:\n{log.read_text()}" if log else "")
        time.sleep(poll)


def test_killed_driver_rerun_redoes_nothing(tmp_path, cluster):
    """(b) kill -9 the driver mid-study: the rerun takes over its lock and retrains or re-measures nothing done."""
    path = _study(tmp_path, "driver", epochs=24, checkpoints=(2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24))
    proc = start_cli(path, cluster)
    runs = tmp_path / "runs" / "driver"
    # Hold the study mid-way, so that a loaded machine cannot let it finish before the kill: the first
    # measurement written, the measuring actor is stopped, and the driver waits on it until killed.
    measurer = find_worker(b"ray::Measurer", raylet_pid(), time.time() + 240)
    _wait_for(lambda: any(runs.glob("results/*/*.parquet")), poll=0.02, log=proc.log)
    os.kill(measurer, signal.SIGSTOP)
    assert len(list(runs.glob("results/*/*.parquet"))) < len(expected_rows(path))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    os.kill(measurer, signal.SIGKILL)  # Ray would end it with its dead driver's job; now, before the snapshot
    assert (runs / "lock.json").exists()  # left behind by the dead driver
    ckpts, rows = _mtimes(tmp_path, "driver", "checkpoints/*/epoch_*.pt"), _mtimes(tmp_path, "driver", "results/*/*.parquet")
    rerun = start_cli(path, cluster)
    log = finish(rerun, 400)
    assert rerun.returncode == 0, log
    assert all(f.stat().st_mtime_ns == t for f, t in ckpts.items()), "a finished checkpoint was retrained"
    assert all(f.stat().st_mtime_ns == t for f, t in rows.items()), "a measured checkpoint was measured again"
    df = _rows(tmp_path, "driver")
    assert df.height == len(expected_rows(path)) and set(zip(df["trial_id"], df["epoch"])) == expected_rows(path)
    assert not (runs / "lock.json").exists()


def test_killed_measuring_actor_is_replaced(tmp_path, cluster):
    """(c) kill -9 the measuring actor: a new one measures its checkpoint, once; no error."""
    path = _study(tmp_path, "actor", epochs=8, checkpoints=(2, 4, 6, 8), metrics=("sam_sharpness", "hessian"))
    killed = []

    def kill_one() -> None:
        deadline = time.time() + 240
        while time.time() < deadline and not killed:
            if list((tmp_path / "runs" / "actor").glob("results/*/*.parquet")):  # it has measured one
                pid = find_worker(b"ray::Measurer", raylet_pid(), deadline)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one, daemon=True)
    killer.start()
    out = execute(plan(str(path)), verbose=0)
    killer.join(timeout=5)
    assert killed, "the measuring actor was never seen alive"
    assert not out.failed and not out.measure_errors and not out.interrupted
    df = _rows(tmp_path, "actor")
    assert df.height == len(expected_rows(path)) and set(zip(df["trial_id"], df["epoch"])) == expected_rows(path)


def test_truncated_files_are_named_and_repaired(tmp_path, cluster):
    """(e) a truncated result file is named and measured again in the next run; a truncated checkpoint is
    named, set aside and retrained in that same run (from the checkpoint before it, issue 13); everything
    else stays as it was."""
    path = _study(tmp_path, "trunc")
    assert not execute(plan(str(path)), verbose=0).failed
    runs = tmp_path / "runs" / "trunc"
    result = sorted(runs.glob("results/*/*.parquet"))[0]
    result.write_bytes(result.read_bytes()[:50])
    p = plan(str(path))
    assert len(p.damaged) == 1 and p.damaged[0].startswith(str(result)) and not p.to_train
    assert len(p.to_measure) == 1
    assert not execute(p, verbose=0).measure_errors
    assert pl.read_parquet(result).height == 1  # repaired in place

    ckpt = sorted(runs.glob("checkpoints/*/epoch_000004.pt"))[0]
    trial_id = ckpt.parent.name
    for f in runs.glob(f"results/{trial_id}/epoch_000004*"):
        f.unlink()
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    later = _mtimes(tmp_path, "trunc", f"checkpoints/{trial_id}/epoch_000006.pt")
    p = plan(str(path))
    assert len(p.damaged) == 1 and p.damaged[0].startswith(f"{ckpt}: corrupt checkpoint")
    assert "set aside" in p.damaged[0] and (ckpt.parent / "epoch_000004.pt.corrupt").exists() and not ckpt.exists()
    assert [t.trial_id for t in p.to_train] == [trial_id]
    out = execute(p, verbose=0)
    assert not out.failed and not out.measure_errors
    assert _mtimes(tmp_path, "trunc", f"checkpoints/{trial_id}/epoch_000006.pt") == later  # not retrained
    df = _rows(tmp_path, "trunc")
    assert df.height == len(expected_rows(path)) and set(zip(df["trial_id"], df["epoch"])) == expected_rows(path)


def test_one_run_per_study(tmp_path, cluster):
    """(f) the same study started twice: the second refuses in one line (the lock in the store)."""
    path = _study(tmp_path, "twice", epochs=40, checkpoints=(20, 40))
    first = start_cli(path, cluster)
    _wait_for(lambda: (tmp_path / "runs" / "twice" / "lock.json").exists())
    first.send_signal(signal.SIGSTOP)  # alive and holding its lock, but it cannot finish before the second starts
    second = start_cli(path, cluster)
    out = finish(second, 120)
    first.send_signal(signal.SIGCONT)
    assert second.returncode == 2 and "storage: the study is being run by pid" in out, out
    first.send_signal(signal.SIGINT)
    first.wait(timeout=240)


def test_deleted_results_and_changed_metrics_remeasure_without_training(tmp_path, cluster):
    """(g) the results folder deleted: the rerun measures every checkpoint again, trains nothing. Changed
    metrics: the stale rows are measured again under the new settings and replaced, nothing retrained."""
    path = _study(tmp_path, "again")
    assert not execute(plan(str(path)), verbose=0).failed
    ckpts = _mtimes(tmp_path, "again", "checkpoints/*/*.pt")
    import shutil
    shutil.rmtree(tmp_path / "runs" / "again" / "results")
    p = plan(str(path))
    assert not p.to_train and len(p.to_measure) == len(expected_rows(path))
    assert not execute(p, verbose=0).measure_errors
    assert _rows(tmp_path, "again").height == len(expected_rows(path))

    _study(tmp_path, "again", metrics=("sam_sharpness", "fisher_rao"))
    p = plan(str(path))
    assert not p.to_train and len(p.to_measure) == len(expected_rows(path))
    assert not execute(p, verbose=0).measure_errors
    df = _rows(tmp_path, "again")
    assert df.height == len(expected_rows(path)) and df["fisher_rao"].null_count() == 0
    assert df["measure_hash"].n_unique() == 1
    assert all(f.stat().st_mtime_ns == t for f, t in ckpts.items()), "a checkpoint was retrained"
    assert not plan(str(path)).to_measure and len(plan(str(path), remeasure=True).to_measure) == df.height


def test_a_local_instance_of_its_own_serves_metrics_on_loopback_only(tmp_path, cluster):
    """(f) started without an address, raystudy never joins another program's local Ray (this module's
    is running): it starts its own. That instance answers /metrics (no token) on 127.0.0.1, not on the
    machine's other addresses."""
    script = """
import socket, urllib.request
import ray
from raystudy.run import connect
print(connect(None, 1))
print("gcs", ray.get_runtime_context().gcs_address)
node = ray.nodes()[0]
port = node["MetricsExportPort"]
urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
import psutil
others = {a.address for addrs in psutil.net_if_addrs().values() for a in addrs
          if a.family == socket.AF_INET and not a.address.startswith("127.")}
reachable = []
for ip in others:
    try:
        socket.create_connection((ip, port), timeout=2).close()
        reachable.append(ip)
    except OSError:
        pass
print("node", node["NodeManagerAddress"], "reachable elsewhere", reachable, "checked", sorted(others))
ray.shutdown()
"""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "started a local Ray instance" in out.stdout
    assert f"gcs {cluster}" not in out.stdout and "gcs 127.0.0.1:" in out.stdout, out.stdout
    assert "node 127.0.0.1 reachable elsewhere []" in out.stdout, out.stdout
