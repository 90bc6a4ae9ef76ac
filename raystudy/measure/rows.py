"""Result rows on storage: one Parquet file per (trial, checkpoint), written atomically by the
measuring process itself, so a row is on storage before anyone hears of it."""
from __future__ import annotations

import io
from typing import Any

import polars as pl

from raystudy.schema import SCHEMA
from raystudy.storage import Store


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
    """``(trial_id, epoch)`` pairs that already have a result file."""
    done = set()
    for trial_id in store.list_dirs(store.path("results")):
        for p in store.list(store.path("results", trial_id), suffix=".parquet"):
            done.add((trial_id, int(p.rsplit("epoch_", 1)[1].split(".")[0])))
    return done
