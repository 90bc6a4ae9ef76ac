"""One storage layer for local folders and object storage: the Store against a local disk and a real S3 API
(moto's server on 127.0.0.1), result rows and the report read and written in a bucket, and every unusable
storage location refused by ``raystudy.run`` with exit 2 and one line, before anything is written."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import ray

from support.fake_results import write_study
from raystudy.analysis.results import NotAStudyError, load_results
from raystudy.run import main, plan
from raystudy.storage import Store, StorageError, study_store
from support.s3_server import bucket_files, s3_bucket

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bucket():
    with s3_bucket() as uri:
        yield uri


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path, bucket) -> Store:
    root = str(tmp_path / "study") if request.param == "local" else f"{bucket}/{tmp_path.name}/study"
    return Store(root)


# --- the Store ---------------------------------------------------------------------------------------------

def test_store_write_read_list_delete(store):
    store.write_bytes(store.path("checkpoints", "t1", "epoch_000002.pt"), b"two")
    store.write_bytes(store.path("checkpoints", "t1", "epoch_000001.pt"), b"one")
    store.write_text(store.path("checkpoints", "t2", "epoch_000001.pt"), "other")
    store.write_bytes(store.path("checkpoints", "t1", "epoch_000001.pt"), b"one again")  # replaced whole
    t1 = store.path("checkpoints", "t1")
    assert store.read_bytes(f"{t1}/epoch_000001.pt") == b"one again"
    assert store.list(t1, ".pt") == [f"{t1}/epoch_000001.pt", f"{t1}/epoch_000002.pt"]
    assert store.list(store.path("checkpoints"), ".pt") == []  # not recursive: no files directly there
    assert len(store.list(store.path("checkpoints"), ".pt", recursive=True)) == 3
    assert store.list_dirs(store.path("checkpoints")) == ["t1", "t2"]
    assert store.list(store.path("nothing"), recursive=True) == [] and store.list_dirs(store.path("nothing")) == []
    assert store.is_dir(t1) and store.exists(f"{t1}/epoch_000002.pt") and not store.exists(store.path("no"))
    if store.local:  # no temporary file left beside the targets
        assert sorted(p.name for p in Path(t1).iterdir()) == ["epoch_000001.pt", "epoch_000002.pt"]
    store.delete_dir(t1)
    assert not store.exists(t1) and store.list_dirs(store.path("checkpoints")) == ["t2"]


def test_store_skips_files_in_flight(store):
    results = store.path("results")
    for name in ("t/epoch_000001.parquet", "t/.epoch_000002.parquet.1a2b.tmp", "_tmp/epoch_000003.parquet",
                 "t/.hidden.parquet"):
        store.write_bytes(f"{results}/{name}", b"x")
    assert store.list(results, ".parquet", recursive=True) == [f"{results}/t/epoch_000001.parquet"]


def test_store_deletes_only_strictly_inside_its_root(store):
    store.write_bytes(store.path("results", "x"), b"1")
    for outside in (store.root, store.root + "/", store.path(".."), store.path("results", "..", ".."),
                    store.root.rsplit("/", 1)[0]):
        with pytest.raises(ValueError, match="refusing to delete"):
            store.delete_dir(outside)
    assert store.exists(store.path("results", "x"))


def test_uris_children_and_unknown_schemes(tmp_path):
    s3 = Store("s3://bkt/runs?endpoint_override=127.0.0.1:9&scheme=http")
    assert (s3.root, s3.name) == ("bkt/runs", "runs")
    study = s3.child("smoke")
    assert study.uri == "s3://bkt/runs/smoke?endpoint_override=127.0.0.1:9&scheme=http"
    assert study.uri_of(study.path("results", "a.parquet")) == \
        "s3://bkt/runs/smoke/results/a.parquet?endpoint_override=127.0.0.1:9&scheme=http"
    gs = Store("gs://bkt/runs/").child("smoke")  # no network to build one
    assert (gs.uri, gs.root, gs.uri_of(gs.path("x"))) == ("gs://bkt/runs/smoke", "bkt/runs/smoke", "gs://bkt/runs/smoke/x")
    local = Store(f"file://{tmp_path}/runs")
    assert local.local and local.uri == str(tmp_path / "runs") and local.uri_of(local.path("a")) == f"{tmp_path}/runs/a"
    for name in ("..", ".", "", "a/b", "a\\b"):
        with pytest.raises(StorageError, match="not a folder name"):
            local.child(name)
    for uri, words in (("foo://x/y", "unsupported scheme 'foo'"), ("hdfs://host/x", "unsupported scheme 'hdfs'"),
                       ("s3:///x", "no bucket"), ("s3://bkt/a/../b", "'..' are not allowed")):
        with pytest.raises(StorageError, match=words):
            Store(uri)


# --- result rows and the report in a bucket ----------------------------------------------------------------

def _upload_fake_study(tmp_path: Path, uri: str) -> Path:
    """The fabricated study, copied into ``uri``; its re-measured file is uploaded last but named to sort
    first, so only the objects' modification times can make its row win."""
    local = write_study(tmp_path)
    store = Store(uri)
    files = sorted((local / "results").rglob("*.parquet"), key=lambda p: p.stat().st_mtime_ns)
    for f in files[:-1]:
        store.write_bytes(store.path("results", *f.relative_to(local / "results").parts), f.read_bytes())
    time.sleep(1.1)  # object stores keep modification times to the second
    store.write_bytes(store.path("results", "digits", "0-remeasure.parquet"), files[-1].read_bytes())
    return local


def test_load_results_from_a_bucket_matches_local(tmp_path, bucket):
    uri = f"{bucket}/{tmp_path.name}/toy"
    local = _upload_fake_study(tmp_path, uri)
    keys = ["trial_id", "step"]
    from_s3, from_disk = load_results(uri).sort(keys), load_results(local).sort(keys)
    assert set(from_s3.columns) == set(from_disk.columns)  # column order follows the first file read
    assert from_s3.select(from_disk.columns).equals(from_disk) and from_s3.height == 124
    row = from_s3.filter(block="digits", regime="base", seed=0, final=True)
    assert row["ece"].item() == pytest.approx(0.05)  # the file written last wins
    older = from_s3.filter(task="rastrigin")  # written without a ray_version column: null, not 0
    assert older.height == 10 and older["ray_version"].null_count() == 10
    with pytest.raises(NotAStudyError, match="no results/ directory"):
        load_results(f"{bucket}/{tmp_path.name}/nope")


def test_report_cli_writes_into_the_bucket(tmp_path, bucket):
    uri = f"{bucket}/{tmp_path.name}/toy"
    _upload_fake_study(tmp_path, uri)
    out = subprocess.run([sys.executable, "-m", "raystudy.report", uri, "--out", str(tmp_path / "copy"), "--png"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"{uri}/report/index.html", str(tmp_path / "copy" / "index.html")]
    store = Store(uri)
    pngs = store.list(store.path("report"), ".png")
    assert len(pngs) >= 4 and all(store.read_bytes(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    html = store.read_bytes(store.path("report", "index.html")).decode()
    assert "raystudy report: toy" in html and html.count("<figure>") == len(pngs)
    copy = tmp_path / "copy"
    assert (copy / "index.html").read_text() == html and len(list(copy.glob("*.png"))) == len(pngs)
    from raystudy.report import build_report
    build_report(uri)  # no PNGs asked for: the last build's leave the bucket too (no picture of older rows stays)
    assert store.list(store.path("report"), ".png") == [] and store.exists(store.path("report", "index.html"))

    missing = subprocess.run([sys.executable, "-m", "raystudy.report", "s3://nope/x"], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and missing.stderr == "s3://nope/x: bucket 'nope' does not exist\n"


# --- unusable storage: exit 2, one line naming storage, nothing written ------------------------------------

STUDY = """
name: {name}
storage: {storage}
blocks:
  - name: circles
    family: circles
    task: circles
    factor: 0.5
    model: mlp
    model_args: {{hidden: [4]}}
    lr: 0.01
    epochs: 1
"""


def _refused(tmp_path: Path, capsys, storage: str, name: str = "bad") -> str:
    """Run ``raystudy.run`` on a study stored at ``storage``; assert exit 2, one line on stderr, no Ray,
    nothing written next to the study file; return the line."""
    path = tmp_path / "study.yaml"
    path.write_text(STUDY.format(name=name, storage=storage))
    before = sorted(tmp_path.rglob("*"))
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{path}: "), err
    assert not ray.is_initialized() and sorted(tmp_path.rglob("*")) == before
    return err.strip()


@pytest.mark.parametrize("storage, words", [
    ("foo://x/runs", "storage: foo://x/runs: unsupported scheme 'foo' (use a local path, s3:// or gs://)"),
    ("hdfs://namenode/runs", "storage: hdfs://namenode/runs: unsupported scheme 'hdfs'"),
    ("/proc/raystudy/runs", "storage: /proc/raystudy/runs: cannot write in /proc"),
    ("/sys/runs", "storage: /sys/runs: cannot write in /sys"),
    ("/dev/null/runs", "storage: /dev/null/runs: /dev/null is a file, not a folder"),
])
def test_unusable_local_or_unknown_storage(tmp_path, capsys, storage, words):
    assert words in _refused(tmp_path, capsys, storage)


def test_storage_that_is_a_file(tmp_path, capsys):
    (tmp_path / "runs").write_text("not a folder")
    assert f"storage: {tmp_path}/runs: {tmp_path}/runs is a file, not a folder" in _refused(
        tmp_path, capsys, str(tmp_path / "runs"))
    (tmp_path / "runs").unlink()
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "bad").write_text("the study folder is a file")
    assert f"{tmp_path}/runs/bad is a file, not a folder" in _refused(tmp_path, capsys, str(tmp_path / "runs"))


def test_missing_bucket(tmp_path, capsys, bucket):
    line = _refused(tmp_path, capsys, "s3://nope/runs")
    assert line.endswith("storage: s3://nope/runs: bucket 'nope' does not exist")


def test_refused_credentials(tmp_path, capsys, bucket, monkeypatch):
    """moto checks credentials once asked to: unknown keys get the 403 real S3 gives missing or wrong ones."""
    import moto.settings
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWN")
    line = _refused(tmp_path, capsys, f"{bucket}/runs")
    assert f"storage: {bucket}/runs: access to bucket 'raystudy-test' denied (no credentials, or they do not " \
           "grant it)" in line
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", float("inf"))
    assert not any("/runs/bad/" in f for f in bucket_files(bucket))


def test_a_study_name_cannot_leave_its_storage(tmp_path, capsys):
    with pytest.raises(StorageError, match="study name '..' does not name a folder inside it"):
        study_store(tmp_path / "runs", "..")
    with pytest.raises(StorageError, match="study name"):
        study_store("s3://bkt/runs", "..")
    path = tmp_path / "study.yaml"  # through the CLI: refused by the spec or by storage, never run
    path.write_text(STUDY.format(name="..", storage=tmp_path / "runs"))
    before = sorted(tmp_path.rglob("*"))
    assert main([str(path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and sorted(tmp_path.rglob("*")) == before


def test_fresh_deletes_only_the_study(tmp_path, bucket):
    for storage in (str(tmp_path / "runs"), f"{bucket}/{tmp_path.name}/runs"):
        path = tmp_path / "study.yaml"
        path.write_text(STUDY.format(name="keep", storage=storage))
        root = Store(storage)
        for rel in ("keep/results/t/epoch_000001.parquet", "keep/notes.txt", "other/results/x.parquet", "keep2/a"):
            root.write_bytes(root.path(*rel.split("/")), b"x")
        p = plan(str(path), fresh=True)
        left = sorted(root.list(root.root, recursive=True))
        assert left == sorted(root.path(*r.split("/")) for r in
                              ("keep/notes.txt", "keep/study.yaml", "other/results/x.parquet", "keep2/a"))
        assert p.to_train and not p.to_measure and p.store.read_bytes(p.store.path("study.yaml")) == path.read_bytes()
