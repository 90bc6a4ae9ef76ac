"""Repairs that complete (issue 13, item 1): a missing or damaged checkpoint or result file that a current row
needs is rebuilt, and the rerun ends with the full row set, identical to an undamaged run's numbers.

Fast: the plan and the numerical code (``train_trial``, ``measure_checkpoint``, ``write_row``) are called
directly, in the order ``raystudy.run`` drives them through Ray; tests/test_faults.py runs a repair through Ray.
"""
from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raystudy.checkpoints import (checkpoint_path, list_checkpoints, load_checkpoint, save_checkpoint,
                                  save_resume_point)
from raystudy.measure import measure_checkpoint, write_row
from raystudy.plan import Plan, plan, still_unmeasured
from raystudy.repair import StartPoint, start_point
from raystudy.schema import SCHEMA
from raystudy.storage import Store
from raystudy.train.loop import train_trial
from support.studies import expected_rows, tiny_block, write_study_yaml

pytestmark = pytest.mark.usefixtures("one_thread")
# What a rerun may change: how long things took and where the rebuilt checkpoint's training started.
TIMING = ("wall_s", "cpu_s", "train_wall_s", "resumed_from")
NUMBERS = [c for c in SCHEMA if c not in TIMING]


def _study(tmp_path: Path, name: str, metrics=("fisher_rao",)) -> Path:
    block = tiny_block(seed=0, shuffle_seed=0, epochs=24, checkpoints=[2, 4, 6, 8, 12, 24], metrics=list(metrics),
                       sharpness={"rhos": [0.01], "draws": 3})
    return write_study_yaml(tmp_path, name, block)


def _execute(p: Plan) -> None:
    """What ``raystudy.run.execute`` does through Ray, in this process: train what is left (each written
    checkpoint is measured, as Tune's callback hands it to the pool), measure the rest, sweep once more."""
    by_id = {t.trial_id: t for t in p.trials}
    todo = list(p.to_measure)
    for t in p.to_train:
        before = {r.path: os.stat(r.path).st_mtime_ns for r in list_checkpoints(p.store, t.trial_id)}
        train_trial(t, p.store)
        todo += [r.path for r in list_checkpoints(p.store, t.trial_id)
                 if os.stat(r.path).st_mtime_ns != before.get(r.path)]
    for path in dict.fromkeys(todo + still_unmeasured(p)):
        write_row(p.store, measure_checkpoint(p.store, path, trial=by_id[Path(path).parent.name]))


def _rows(tmp_path: Path, name: str) -> pl.DataFrame:
    return pl.read_parquet(f"{tmp_path}/runs/{name}/results/**/*.parquet").sort("trial_id", "epoch")


def _mtimes(p: Plan) -> dict[str, int]:
    return {r.path: os.stat(r.path).st_mtime_ns for t in p.trials for r in list_checkpoints(p.store, t.trial_id)}


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> tuple[Path, pl.DataFrame]:
    """A study run once, undamaged: (its folder, its rows). Tests copy it and damage the copy."""
    tmp = tmp_path_factory.mktemp("done")
    path = _study(tmp, "ref")
    _execute(plan(str(path)))
    return tmp, _rows(tmp, "ref")


def _copy(done: tuple[Path, pl.DataFrame], tmp_path: Path, metrics=("fisher_rao",)) -> Path:
    import shutil
    shutil.copytree(done[0] / "runs" / "ref", tmp_path / "runs" / "ref")
    return _study(tmp_path, "ref", metrics)


def test_truncated_middle_checkpoint_is_rebuilt_from_the_one_before(tmp_path, done):
    """Epoch 6 of 24 truncated before it was measured: the plan sets it aside, training resumes from epoch 4
    (not from 24, which would skip it), rebuilds epoch 6 alone and the rows come out complete and identical."""
    path = _copy(done, tmp_path)
    p = plan(str(path))
    (trial,) = p.trials
    six = checkpoint_path(p.store, trial.trial_id, 6)
    for f in Path(p.store.path("results", trial.trial_id)).glob("epoch_000006*"):
        f.unlink()
    Path(six).write_bytes(Path(six).read_bytes()[:100])
    before = _mtimes(p)
    p = plan(str(path))
    assert [t.trial_id for t in p.to_train] == [trial.trial_id] and six not in p.to_measure
    assert len(p.damaged) == 1 and p.damaged[0].startswith(f"{six}: corrupt checkpoint")
    assert "set aside as epoch_000006.pt.corrupt" in p.damaged[0] and Path(f"{six}.corrupt").exists()
    _execute(p)
    assert load_checkpoint(p.store, six)["resumed_from"] == 4
    assert {f: t for f, t in _mtimes(p).items() if f != six} == {f: t for f, t in before.items() if f != six}
    df = _rows(tmp_path, "ref")
    assert set(zip(df["trial_id"], df["epoch"])) == expected_rows(path) and df.height == len(expected_rows(path))
    assert df.select(NUMBERS).equals(done[1].select(NUMBERS))
    p = plan(str(path))
    assert not p.to_train and not p.to_measure and not p.damaged  # a third run has nothing to do


def test_corrupt_measured_checkpoint_then_changed_metrics_gives_full_rows(tmp_path, done):
    """A measured checkpoint corrupted, then a metric added: every row is stale, the corrupt checkpoint is
    rebuilt (from the one before it) and every checkpoint measured under the new settings."""
    path = _copy(done, tmp_path, metrics=("fisher_rao", "relative_flatness"))
    p = plan(str(path))
    (trial,) = p.trials
    eight = checkpoint_path(p.store, trial.trial_id, 8)
    with open(eight, "r+b") as f:  # damaged in the middle, not truncated
        f.seek(os.path.getsize(eight) // 2)
        f.write(b"\0" * 64)
    p = plan(str(path))
    assert [t.trial_id for t in p.to_train] == [trial.trial_id] and eight not in p.to_measure
    assert len(p.to_measure) == len(expected_rows(path)) - 1 and len(p.damaged) == 1
    _execute(p)
    df = _rows(tmp_path, "ref")
    assert set(zip(df["trial_id"], df["epoch"])) == expected_rows(path) and df.height == len(expected_rows(path))
    assert df["relative_flatness"].null_count() == 0 and df["measure_hash"].n_unique() == 1
    same = [c for c in NUMBERS if not c.startswith("relative_flatness") and c not in ("measure_hash", "metrics")]
    assert df.select(same).equals(done[1].select(same)), _diff(df.select(same), done[1].select(same))


def test_damaged_result_body_is_measured_again(tmp_path, done):
    """A result file whose head and tail (PAR1) are intact but whose test_acc column chunk is damaged: its
    page checksum fails, the plan names it and measures it again; the new row equals the old one."""
    path = _copy(done, tmp_path)
    p = plan(str(path))
    result = sorted(Path(p.store.path("results")).glob("*/epoch_000012*.parquet"))[0]
    blob = bytearray(result.read_bytes())
    column = pq.ParquetFile(pa.BufferReader(bytes(blob))).metadata.row_group(0)
    chunk = next(column.column(i) for i in range(column.num_columns) if column.column(i).path_in_schema == "test_acc")
    end = chunk.data_page_offset + chunk.total_compressed_size
    blob[end - 4:end] = bytes(b ^ 0xFF for b in blob[end - 4:end])
    result.write_bytes(bytes(blob))
    assert blob[:4] == blob[-4:] == b"PAR1"
    p = plan(str(path))
    assert len(p.damaged) == 1 and p.damaged[0].startswith(f"{result}: damaged Parquet file")
    assert not p.to_train and [Path(x).name for x in p.to_measure] == ["epoch_000012.pt"]
    _execute(p)
    assert _rows(tmp_path, "ref").select(NUMBERS).equals(done[1].select(NUMBERS))


def test_start_point_never_resumes_past_a_gap(tmp_path, done):
    """Checkpoint 6 deleted, 4 corrupt, a resume point at 10: training starts from epoch 2 (4 is set aside and
    joins the gap), and a resume point before the first gap is used when it is the latest intact state."""
    path = _copy(done, tmp_path)
    p = plan(str(path))
    (trial,) = p.trials
    tid, store = trial.trial_id, p.store
    state10 = load_checkpoint(store, checkpoint_path(store, tid, 12)) | {"epoch": 10}
    save_resume_point(store, tid, 10, {k: v for k, v in state10.items() if k not in ("format", "trial_id", "epoch")})
    os.unlink(checkpoint_path(store, tid, 6))
    Path(checkpoint_path(store, tid, 4)).write_bytes(b"garbage")
    start = start_point(store, tid, list(trial.checkpoints))
    assert start.state["epoch"] == 2 and start.missing == [4, 6] and len(start.set_aside) == 1
    assert Path(f"{checkpoint_path(store, tid, 4)}.corrupt").exists()
    state3 = load_checkpoint(store, checkpoint_path(store, tid, 2))
    save_resume_point(store, tid, 3, {k: v for k, v in state3.items() if k not in ("format", "trial_id", "epoch")})
    assert start_point(store, tid, list(trial.checkpoints)).state["epoch"] == 3
    assert start_point(store, tid, [2, 8, 12]).missing == [] and start_point(store, tid, [2, 8, 12]).state is None


def _diff(a, b):
    return [c for c in a.columns if not a[c].equals(b[c])]


def _hand_state(epoch: int) -> dict:
    return {"model": {"w": torch.full((2,), float(epoch))}, "trial": {}, "step": epoch}


def test_start_point_by_hand(tmp_path):
    """Hand-made states, no training: where a trial with checkpoints [2, 4, 6, 8] restarts."""
    store, wanted = Store(tmp_path / "s"), [2, 4, 6, 8]
    assert start_point(store, "t", wanted) == StartPoint(None, [2, 4, 6, 8], [])  # nothing yet: from scratch
    for epoch in (2, 4, 8):
        save_checkpoint(store, "t", epoch, _hand_state(epoch))
    start = start_point(store, "t", wanted)
    assert start.state["epoch"] == 4 and start.missing == [6] and start.set_aside == []  # not 8: past the gap
    save_resume_point(store, "t", 5, _hand_state(5))
    assert start_point(store, "t", wanted).state["epoch"] == 5  # a resume point between the two wins
    save_resume_point(store, "t", 7, _hand_state(7))
    assert start_point(store, "t", wanted).state["epoch"] == 4  # ... but never one beyond the gap
    ckpt4 = checkpoint_path(store, "t", 4)
    store.write_bytes(ckpt4, b"garbage")
    skipped = start_point(store, "t", wanted, writes=False)  # a data-parallel worker: reads, moves nothing
    assert skipped.state["epoch"] == 2 and skipped.missing == [4, 6] and skipped.set_aside[0].endswith("skipped")
    assert store.exists(ckpt4)
    start = start_point(store, "t", wanted)
    assert start.state["epoch"] == 2 and start.set_aside[0].endswith("set aside as epoch_000004.pt.corrupt")
    assert not store.exists(ckpt4) and store.exists(f"{ckpt4}.corrupt")
    save_checkpoint(store, "t", 4, _hand_state(4))
    save_checkpoint(store, "t", 6, _hand_state(6))
    assert start_point(store, "t", wanted) == StartPoint(None, [], [])  # complete: nothing to train
