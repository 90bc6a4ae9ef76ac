"""Result rows on storage: one Parquet file per (trial, checkpoint), written atomically by the
measuring process itself, so a row is on storage before anyone hears of it."""
from __future__ import annotations

import io
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from raystudy.layout import result_path, row_files
from raystudy.schema import SCHEMA
from raystudy.storage import Store


def row_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Rows (dicts keyed by ``SCHEMA``'s columns) as a frame with exactly the schema's types."""
    return pl.DataFrame(rows, schema=SCHEMA)


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
