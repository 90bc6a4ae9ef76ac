"""The whole pipeline through real Ray: Tune trials, Train (local mode), the analysis actor pool,
Parquet rows and the report; then Ctrl-C and a rerun that resumes without redoing anything."""
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import polars as pl
import pytest
import ray

from raystudy.run import execute, plan
from raystudy.spec import expand, load_study

pytestmark = pytest.mark.slow
TINY = Path(__file__).parent / "studies" / "tiny.yaml"


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _study(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(TINY.read_text().replace("name: tiny", f"name: {name}").replace("./runs", str(tmp_path / "runs")))
    return path


def _expected(path: Path) -> set[tuple[str, int]]:
    return {(t.trial_id, e) for t in expand(load_study(path)) for e in t.checkpoints}


def test_study_end_to_end(tmp_path, cluster):
    path = _study(tmp_path, "e2e")
    p = plan(str(path))
    assert len(p.to_train) == 14 and not p.to_measure
    out = execute(p, verbose=0)
    assert not out.failed and not out.measure_errors and not out.interrupted
    df = pl.scan_parquet(f"{p.store.root}/results/**/*.parquet").collect()
    assert set(zip(df["trial_id"], df["epoch"])) == _expected(path) and df.height == len(_expected(path))
    assert (df["status"] == "ok").all() and (df["bn_mode"] == "stored").all()
    fn, img = df.filter(family="functions"), df.filter(family="images")
    assert fn["ece"].null_count() == fn.height and fn["sam_sharpness"].null_count() == 0
    assert img["fisher_rao"].null_count() == 0 and img["relative_flatness"].null_count() == 0
    assert img.filter(regime="base")["sam_rho"].null_count() == img.filter(regime="base").height
    assert set(df["ray_version"]) == {ray.__version__}

    # Tune's loggers see every result, the per-epoch progress too: TensorBoard event files per trial.
    assert list(Path(p.store.root, "ray", "tune").glob("*/events.out.tfevents*"))

    from raystudy.report import build_report
    index = Path(build_report(p.store.uri))
    html = index.read_text()
    assert index.name == "index.html" and "<svg" in html and 'src="http' not in html
    pngs = list(index.parent.glob("*.png"))
    assert len(pngs) >= 4 and all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in pngs)

    # The dashboard's Prometheus endpoint carries the study's own progress metrics.
    port = ray.nodes()[0]["MetricsExportPort"]
    wanted = {"ray_raystudy_checkpoints_measured_total", "ray_raystudy_trials_finished_total",
              "ray_raystudy_analysis_queue_depth", "ray_raystudy_measure_seconds_count"}
    names: set[str] = set()
    for _ in range(60):  # metrics are exported every few seconds
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        names = {line.split("{")[0] for line in text.splitlines() if line.startswith("ray_raystudy")}
        if wanted <= names:
            break
        time.sleep(1)
    assert wanted <= names


def test_trial_with_real_train_workers(tmp_path, cluster):
    """workers: 1 -> a Train worker actor beside a token-CPU trial driver; TuneReportCallback
    forwards each checkpoint to Tune and on to the pool."""
    path = tmp_path / "workers.yaml"
    path.write_text(f"""
name: workers
storage: {tmp_path}/runs
analysis: {{actors: 1, cpus: 0.5}}
blocks:
  - name: circles
    family: circles
    task: circles
    factor: 0.5
    model: mlp
    model_args: {{hidden: [8]}}
    lr: 0.01
    batch_size: 10
    epochs: 2
    checkpoints: [0, 2]
    sharpness: {{rhos: [0.005], draws: 5}}
    resources: {{cpus: 1, workers: 1}}
""")
    p = plan(str(path))
    out = execute(p, verbose=0)
    assert not out.failed and not out.measure_errors and not out.interrupted
    df = pl.scan_parquet(f"{p.store.root}/results/**/*.parquet").collect()
    assert sorted(df["epoch"]) == [0, 2] and (df["status"] == "ok").all()


def _run(path: Path, address: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_ADDRESS": address, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "raystudy.run", str(path), "--no-report"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_interrupt_then_rerun_resumes(tmp_path, cluster):
    path = _study(tmp_path, "resume")
    ckpts = tmp_path / "runs" / "resume" / "checkpoints"
    proc = _run(path, cluster)
    deadline = time.time() + 240
    while time.time() < deadline and len(list(ckpts.glob("*/*.pt"))) < 6:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # Ctrl-C mid-study
    log = proc.communicate(timeout=240)[0]
    assert proc.returncode == 130, log
    before = {f: f.stat().st_mtime_ns for f in ckpts.glob("*/*.pt")}
    assert 0 < len(before) < len(_expected(path)), "the interrupt should land mid-study"

    rerun = _run(path, cluster)
    log = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, log
    assert all(f.stat().st_mtime_ns == t for f, t in before.items()), "a finished checkpoint was retrained"
    df = pl.scan_parquet(f"{tmp_path}/runs/resume/results/**/*.parquet").collect()
    assert df.height == len(_expected(path)) and set(zip(df["trial_id"], df["epoch"])) == _expected(path)

    again = _run(path, cluster)  # a third run finds nothing to do
    log = again.communicate(timeout=120)[0]
    assert again.returncode == 0 and "0 to train, 0 checkpoints to measure" in log, log


def test_cifar_format_study_with_corruption_and_consistency(tmp_path, cluster):
    """Family C on CIFAR-10 files in the release format (generated): corruption accuracy over the 95 -C sets
    and disagreement between seeds reach the rows and the report's paired tests."""
    from dataset_files import write_cifar10, write_cifar10_c
    data = write_cifar10(tmp_path / "data", n_train=200, n_test=60)
    write_cifar10_c(tmp_path / "data", data["x_test"], data["y_test"])
    path = tmp_path / "cifar.yaml"
    path.write_text(f"""
name: cifar
storage: {tmp_path}/runs
analysis: {{actors: 1, cpus: 1}}
blocks:
  - name: c10
    family: images
    task: cifar10
    data_root: {tmp_path}/data
    model: mlp
    model_args: {{hidden: [16]}}
    regime: [base, aug]
    seed: [0, 1, 2]
    lr: 0.05
    batch_size: 50
    epochs: 2
    metrics: [corruption, consistency, fisher_rao]
    corruption: {{max_samples: 20}}
""")
    p = plan(str(path))
    out = execute(p, verbose=0)
    assert not out.failed and not out.measure_errors and not out.interrupted
    df = pl.scan_parquet(f"{p.store.root}/results/**/*.parquet").collect()
    assert df.height == 6 and (df["status"] == "ok").all() and df["corruption_acc"].null_count() == 0
    by = df["corruption_acc_by"][0].to_list()
    assert len(by) == 95 and {b["n"] for b in by} == {20}
    assert df["corruption_acc"][0] == pytest.approx(sum(b["acc"] for b in by) / 95)
    assert all((Path(p.store.root) / rel).is_file() for rel in df["predictions"])

    from raystudy.report import build_report
    html = Path(build_report(p.store.uri)).read_text()
    for metric in ("corruption_acc", "disagreement", "jsd"):
        assert f"<th>{metric}</th>" in html  # a summary column
    tests = html[html.index("each regime vs base, paired by seed"):]
    assert ">corruption_acc<" in tests and ">disagreement<" in tests
