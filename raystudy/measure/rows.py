"""Result rows on storage: one Parquet file per (trial, checkpoint), written atomically by the
measuring process itself, so a row is on storage before anyone hears of it."""
from __future__ import annotations

import io
import re
from typing import Any

import polars as pl

from raystudy.schema import SCHEMA
from raystudy.storage import Store

_RESULT = re.compile(r"(?P<trial>[^/]+)/epoch_(?P<epoch>\d+)\.parquet")  # result_path's layout


def row_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Rows (dicts keyed by ``SCHEMA``'s columns) as a frame with exactly the schema's types."""
    return pl.DataFrame(rows, schema=SCHEMA)


def result_path(store: Store, trial_id: str, epoch: int) -> str:
    return store.path("results", trial_id, f"epoch_{epoch:06d}.parquet")


def write_row(store: Store, row: dict[str, Any]) -> str:
    """Atomically write one row as its own Parquet file; returns its path."""
    buf = io.BytesIO()
    row_frame([row]).write_parquet(buf)
    path = result_path(store, row["trial_id"], row["epoch"])
    store.write_bytes(path, buf.getvalue())
    return path


def measured(store: Store) -> set[tuple[str, int]]:
    """``(trial_id, epoch)`` pairs that already have a result file. Cost: one recursive listing of
    results/ (on an object store one request per 1,000 files, not one per trial)."""
    results = store.path("results")
    done = set()
    for path in store.list(results, suffix=".parquet", recursive=True):
        m = _RESULT.fullmatch(path[len(results) + 1:])
        if m:
            done.add((m["trial"], int(m["epoch"])))
    return done
