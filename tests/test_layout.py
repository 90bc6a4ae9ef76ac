"""raystudy.layout: every path under ``<storage>/<study>/`` spelled out by hand, the file names parsed back,
result files found from one listing (files in flight and strangers skipped), and predictions paths that
cannot leave the study's results/ folder."""
from __future__ import annotations

import pytest

from raystudy import layout
from raystudy.storage import Store


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "s")


def test_every_path_is_the_documented_one(store, tmp_path):
    root = f"{tmp_path}/s"
    assert layout.study_file(store) == f"{root}/study.yaml" and layout.lock_file(store) == f"{root}/lock.json"
    assert layout.checkpoints_dir(store, "t1") == f"{root}/checkpoints/t1"
    assert layout.checkpoint_path(store, "t1", 15) == f"{root}/checkpoints/t1/epoch_000015.pt"
    assert layout.resume_path(store, "t1") == f"{root}/checkpoints/t1/resume.pt"
    assert layout.results_dir(store) == f"{root}/results" and layout.results_dir(store, "t1") == f"{root}/results/t1"
    assert layout.result_path(store, "t1", 7, "ab12") == f"{root}/results/t1/epoch_000007-mab12.parquet"
    assert layout.predictions_path("t1", 7) == "results/t1/epoch_000007.predictions.npz"
    assert layout.report_path(store) == f"{root}/report" and layout.report_path(store, "a.png") == f"{root}/report/a.png"
    assert layout.ray_dir(store, "train", "t1") == f"{root}/ray/train/t1"
    assert layout.OUTPUTS == ("checkpoints", "results", "ray", "report")  # what --fresh deletes: not study.yaml


def test_checkpoint_names_parse_back():
    assert layout.checkpoint_epoch("/x/checkpoints/t1/epoch_000015.pt") == 15
    assert layout.checkpoint_epoch("epoch_1234567.pt") == 1234567  # more than six digits still reads
    for other in ("/x/checkpoints/t1/resume.pt", "/x/t1/.epoch_000015.pt.1a2b.tmp", "/x/t1/epoch_000015.pt.corrupt",
                  "/x/t1/epoch_15.ptx"):
        assert layout.checkpoint_epoch(other) is None, other
    assert layout.checkpoint_trial("s3://b/runs/st/checkpoints/c-circles-mlp-base-s0/epoch_000002.pt") == \
        "c-circles-mlp-base-s0"


def test_row_files_come_from_one_listing_and_skip_what_is_not_a_row(store, tmp_path):
    store.write_text(layout.result_path(store, "a", 2, "ff00"), "x")
    store.write_text(layout.result_path(store, "a", 4, "ff00"), "xy")
    store.write_text(store.path("results", "b", "epoch_000004.parquet"), "old")  # before the hash named the file
    store.write_text(store.path("results", "b", "epoch_000004.predictions.npz"), "p")  # predictions, not a row
    store.write_text(store.path("results", "b", "notes.parquet"), "?")  # not a row name
    for in_flight in (".epoch_000006-mff00.parquet", "_epoch_000008-mff00.parquet"):  # atomic writers' names
        (tmp_path / "s" / "results" / "a" / in_flight).write_text("in flight")
    files = sorted(layout.row_files(store), key=lambda f: (f.trial_id, f.epoch))
    assert [(f.trial_id, f.epoch, f.measure_hash, f.size) for f in files] == [
        ("a", 2, "ff00", 1), ("a", 4, "ff00", 2), ("b", 4, "", 3)]
    assert [f.epoch for f in layout.row_files(store, "a")] == [2, 4]
    assert layout.measured(files) == {("a", 2), ("a", 4), ("b", 4)}
    # Current settings: a's rows were measured under ff00, b's old row under no hash at all.
    assert layout.measured(files, {"a": "ff00", "b": "0123"}) == {("a", 2), ("a", 4)}
    assert layout.measured(files, {"a": "0123"}) == set()


@pytest.mark.parametrize("relative", [
    "results/t1/epoch_000001.predictions.npz",
    "results/deep/t1/epoch_000001.predictions.npz",
])
def test_predictions_inside_results_are_accepted(store, tmp_path, relative):
    assert layout.predictions_file(store, relative) == f"{tmp_path}/s/{relative}"


@pytest.mark.parametrize("relative", [
    "results/../lock.json",
    "results/t1/../../study.yaml.predictions.npz",
    "/etc/passwd.predictions.npz",
    "checkpoints/t1/epoch_000001.predictions.npz",
    "results/t1/epoch_000001.parquet",
    "results/t1\\..\\x.predictions.npz",
    "results//x.predictions.npz",
    "results/x.predictions.npz",
])
def test_predictions_outside_results_are_refused(store, relative):
    with pytest.raises(ValueError, match="is not a predictions file inside the study's results/ folder"):
        layout.predictions_file(store, relative)
