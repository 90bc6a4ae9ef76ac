"""Result rows on storage: one Parquet file per (trial, checkpoint), written atomically by the
measuring process itself, so a row is on storage before anyone hears of it."""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from raystudy.schema import SCHEMA
from raystudy.storage import Store

# result_path's layout; rows written before measurement hashes existed have no "-m<hash>" part.
_RESULT = re.compile(r"(?P<trial>[^/]+)/epoch_(?P<epoch>\d+)(?:-m(?P<hash>[0-9a-f]+))?\.parquet")


def row_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Rows (dicts keyed by ``SCHEMA``'s columns) as a frame with exactly the schema's types."""
    return pl.DataFrame(rows, schema=SCHEMA)


def result_path(store: Store, trial_id: str, epoch: int, measure_hash: str) -> str:
    """``results/<trial_id>/epoch_NNNNNN-m<hash>.parquet``: the hash of the measurement settings names the
    file, so one listing tells which rows are current without opening any."""
    return store.path("results", trial_id, f"epoch_{epoch:06d}-m{measure_hash}.parquet")


@dataclass(frozen=True)
class RowFile:
    trial_id: str
    epoch: int
    measure_hash: str  # "" for rows written before hashes existed
    path: str
    size: int


def write_row(store: Store, row: dict[str, Any]) -> str:
    """Atomically write one row as its own Parquet file, then delete the rows of the same checkpoint
    measured under other settings (write first: a crash between the two loses nothing). Returns its path."""
    buf = io.BytesIO()
    # Page checksums: a file damaged anywhere is found when read back (``plan.row_file_problem``).
    pq.write_table(row_frame([row]).to_arrow(), buf, compression="zstd", write_page_checksum=True)
    path = result_path(store, row["trial_id"], row["epoch"], row["measure_hash"])
    store.write_bytes(path, buf.getvalue())
    for old in row_files(store, row["trial_id"]):
        if old.epoch == row["epoch"] and old.path != path:
            store.delete_file(old.path)
    return path


def row_files(store: Store, trial_id: str | None = None) -> list[RowFile]:
    """Every result file (of one trial, or of the study), parsed from one listing; on an object store one
    request per 1,000 files, not one per trial."""
    results = store.path("results")
    where = store.path("results", trial_id) if trial_id else results
    out = []
    for info in store.files(where, suffix=".parquet", recursive=trial_id is None):
        m = _RESULT.fullmatch(info.path[len(results) + 1:])
        if m:
            out.append(RowFile(m["trial"], int(m["epoch"]), m["hash"] or "", info.path, info.size))
    return out


def measured(files: list[RowFile], current: dict[str, str] | None = None) -> set[tuple[str, int]]:
    """``(trial_id, epoch)`` pairs among the result ``files`` (``row_files``); with ``current`` (trial id ->
    measurement hash) only rows measured under the current settings count. No I/O."""
    return {(f.trial_id, f.epoch) for f in files if current is None or current.get(f.trial_id) == f.measure_hash}
