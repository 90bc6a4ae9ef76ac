"""raystudy.plan without Ray: what is left to do, read from storage alone, as trials are trained and rows
written in this process; result files that cannot be trusted, each with its reason; ``fresh`` and
``remeasure``."""
from __future__ import annotations

import io

import polars as pl
import pyarrow.parquet as pq
import pytest

from raystudy.checkpoints import list_checkpoints
from raystudy.layout import RowFile, result_path, row_files
from raystudy.measure import measure_checkpoint, write_row
from raystudy.plan import plan, row_file_problem
from raystudy.storage import Store
from raystudy.train.loop import train_trial
from support.studies import tiny_block, write_study_yaml

pytestmark = pytest.mark.usefixtures("one_thread")


def _study(tmp_path, **block):
    """Two circles trials (seeds 0 and 1), checkpoints at epochs 1 and 2, Fisher-Rao measured."""
    block = tiny_block(**{"seed": [0, 1], "checkpoints": [1], "metrics": ["fisher_rao"], **block})
    return str(write_study_yaml(tmp_path, "p", block))


def _measure_all(p) -> None:
    for path in p.to_measure:
        write_row(p.store, measure_checkpoint(p.store, path))


def test_what_is_left_follows_what_is_on_storage(tmp_path):
    path = _study(tmp_path)
    p = plan(path)
    assert [t.seed for t in p.to_train] == [0, 1] and p.to_measure == [] and p.measured == 0
    assert p.store.read_bytes(p.store.path("study.yaml")) == open(path, "rb").read()  # the file as run
    first, second = p.trials
    train_trial(first, p.store)
    p = plan(path)
    assert p.to_train == [second]
    assert p.to_measure == [r.path for r in list_checkpoints(p.store, first.trial_id)] and len(p.to_measure) == 2
    _measure_all(p)
    train_trial(second, p.store)
    p = plan(path)
    assert p.to_train == [] and len(p.to_measure) == 2 and p.measured == 2
    _measure_all(p)
    p = plan(path)
    assert (p.to_train, p.to_measure, p.damaged, p.measured) == ([], [], [], 4)
    assert len(plan(path, remeasure=True).to_measure) == 4

    # Other measurement settings: every row is stale, nothing is retrained.
    p = plan(_study(tmp_path, sharpness={"rhos": [0.02], "draws": 3}, metrics=["fisher_rao", "sam_sharpness"]))
    assert p.to_train == [] and len(p.to_measure) == 4 and p.measured == 0
    _study(tmp_path)  # back to the settings the rows were measured under

    # A damaged row is named and measured again; fresh starts the study over (its own folders only).
    victim = row_files(p.store)[0]
    with open(victim.path, "r+b") as f:
        f.truncate(victim.size - 1)
    p = plan(path)
    assert p.damaged == [f"{victim.path}: not a complete Parquet file (truncated?); measured again"]
    assert len(p.to_measure) == 1
    (tmp_path / "runs" / "keep.txt").write_text("not the study's")
    p = plan(path, fresh=True)
    assert len(p.to_train) == 2 and not row_files(p.store) and (tmp_path / "runs" / "keep.txt").exists()


def test_result_files_that_cannot_be_trusted(tmp_path):
    store = Store(tmp_path / "s")
    row = {"trial_id": "t", "epoch": 1, "measure_hash": "ab", "status": "ok", "test_loss": 0.5}
    good = write_row(store, row)
    blob = store.read_bytes(good)

    def problem(data: bytes) -> str | None:
        path = result_path(store, "t", 2, "ab")
        store.write_bytes(path, data)
        return row_file_problem(store, RowFile("t", 2, "ab", path, len(data)))

    assert problem(blob) is None
    assert problem(b"") == "empty"
    assert problem(blob[:-1]) == "not a complete Parquet file (truncated?)"
    # The last byte of test_loss's pages: the footer still reads, only the page checksum can tell.
    group = pq.ParquetFile(io.BytesIO(blob)).metadata.row_group(0)
    chunk = next(c for c in map(group.column, range(group.num_columns)) if c.path_in_schema == "test_loss")
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    flipped = bytearray(blob)
    flipped[start + chunk.total_compressed_size - 1] ^= 0xFF
    assert problem(bytes(flipped)).startswith("damaged Parquet file (")
    buf = io.BytesIO()
    pl.concat([pl.read_parquet(blob)] * 2).write_parquet(buf)
    assert problem(buf.getvalue()) == "2 rows where one was written"
    missing = RowFile("t", 9, "ab", result_path(store, "t", 9, "ab"), 10)
    assert row_file_problem(store, missing).startswith("cannot read: ")
