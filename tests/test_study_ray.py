"""The whole pipeline through real Ray: Tune trials, Train (local mode), the analysis actor pool,
Parquet rows and the report. Ctrl-C and the rerun are tested in the bucket (test_study_s3.py), a killed
driver in test_faults.py, real Train workers in test_study_s3.py and test_ddp.py."""
import time
import urllib.request
from pathlib import Path

import polars as pl
import pytest
import ray

from raystudy.run import execute, plan
from support.ray_procs import local_ray
from support.studies import expected_rows, tiny_block, tiny_study, write_study_yaml

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    with local_ray(dashboard=True) as address:
        yield address


def test_study_end_to_end(tmp_path, cluster):
    path = tiny_study(tmp_path, "e2e")
    p = plan(str(path))
    assert len(p.to_train) == 14 and not p.to_measure
    out = execute(p, verbose=0)
    assert not out.failed and not out.measure_errors and not out.interrupted
    df = pl.scan_parquet(f"{p.store.root}/results/**/*.parquet").collect()
    assert set(zip(df["trial_id"], df["epoch"])) == expected_rows(path) and df.height == len(expected_rows(path))
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
    assert html.count('class="vl-spec"') >= 4 and not list(index.parent.glob("*.png"))  # the page draws them all

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


def test_cifar_format_study_with_corruption_and_consistency(tmp_path, cluster):
    """Family C on CIFAR-10 files in the release format (generated): corruption accuracy over the 95 -C sets
    and disagreement between seeds reach the rows and the report's paired tests."""
    from support.dataset_files import write_cifar10, write_cifar10_c
    data = write_cifar10(tmp_path / "data", n_train=200, n_test=60)
    write_cifar10_c(tmp_path / "data", data["x_test"], data["y_test"])
    block = dict(name="c10", family="images", task="cifar10", data_root=f"{tmp_path}/data", model="mlp",
                 model_args={"hidden": [16]}, regime=["base", "aug"], seed=[0, 1, 2], lr=0.05, batch_size=50, epochs=2,
                 metrics=["corruption", "consistency", "fisher_rao"], corruption={"max_samples": 20})
    path = write_study_yaml(tmp_path, "cifar", block, analysis={"actors": 1, "cpus": 1})
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


def test_measuring_never_idles_a_training_slot(tmp_path, cluster):
    """On 2 CPUs, two one-CPU trials train at once while a checkpoint is being measured: the pool shares the
    cores instead of holding one (with a CPU held for the pool, as before, trials never overlapped). Read
    from storage afterwards: a trial trains from its epoch-0 checkpoint's write to its last one's; a
    measurement runs for its row's ``wall_s`` up to the row file's write."""
    path = write_study_yaml(tmp_path, "slots", tiny_block(
        factor=[0.3, 0.7], model_args={"hidden": [16, 16]}, seed=[0, 1, 2], epochs=160, checkpoints=[0, 80, 160],
        metrics=["sam_sharpness", "fisher_rao"], sharpness={"rhos": [0.01], "draws": 20}),
        analysis={"actors": 1, "cpus": 1})
    # One trial trained beforehand, here, leaves three checkpoints to measure first: the measuring process
    # starts with the run and is up when the trials start (a cold start takes 5-15 s on this shared machine).
    from raystudy.train.loop import train_trial
    before = plan(str(path))
    train_trial(before.to_train[0], before.store)
    p = plan(str(path))
    assert len(p.to_train) == 5 and len(p.to_measure) == 3
    out = execute(p, verbose=0)
    assert not out.failed and not out.measure_errors
    root = Path(p.store.root)
    training = []
    for folder in (root / "checkpoints").iterdir():
        times = sorted(f.stat().st_mtime for f in folder.glob("epoch_*.pt"))
        training.append((times[0], times[-1]))
    rows = pl.read_parquet(f"{root}/results/**/*.parquet", include_file_paths="file")
    assert rows.height == 6 * 3
    measuring = [(Path(f).stat().st_mtime - w, Path(f).stat().st_mtime) for f, w in zip(rows["file"], rows["wall_s"])]
    both = [(max(a[0], b[0]), min(a[1], b[1])) for i, a in enumerate(training) for b in training[i + 1:]]
    both = [(s, e) for s, e in both if e > s]
    assert both, f"trials never trained at the same time: {training}"
    beside = [min(e, me) - max(s, ms) for s, e in both for ms, me in measuring if min(e, me) > max(s, ms)]
    assert beside, f"no checkpoint was measured while two trials trained: {both}, {measuring}"
