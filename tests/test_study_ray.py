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
from support.studies import expected_rows, tiny_study, write_study_yaml

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
