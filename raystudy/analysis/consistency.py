"""Functional consistency (docs/PROTOCOL.md): how much models of one configuration that differ only in their
seed agree on the test set. Computed from the predictions the measuring stage stores beside each row."""
from __future__ import annotations

import itertools
from typing import Callable

import numpy as np
import polars as pl

from raystudy.analysis.aggregate import comparison_keys
from raystudy.safety.consistency import disagreement, js_divergence

Read = Callable[[str], tuple[np.ndarray, np.ndarray]]  # relative path -> (classes (N,), probabilities (N, C))


def add_consistency(df: pl.DataFrame, read: Read) -> pl.DataFrame:
    """``df`` with ``disagreement`` and ``jsd`` filled for every row that stored predictions: the mean, over
    the other seeds of the same configuration (block, task, model, regime and every hyperparameter) at the
    same epoch, of 1 - argmax agreement and of the Jensen-Shannon divergence (nats). So for k seeds each
    row averages k - 1 partners and the k rows together cover the k (k - 1) ordered pairs (90 for 10).
    Rows without predictions, or without a partner, stay null. Cost: k (k - 1) / 2 comparisons of N x C
    arrays per configuration and epoch; reads each predictions file once."""
    if "predictions" not in df.columns or df["predictions"].null_count() == df.height:
        return df
    config, condition = comparison_keys(df)
    keys = [*config, *condition, "epoch"]
    values: dict[tuple[str, int], tuple[float, float]] = {}
    stored = df.filter(pl.col("predictions").is_not_null())
    for group in stored.partition_by(keys, maintain_order=True):
        rows = group.unique(subset=["seed"], keep="last").sort("seed")
        if rows.height < 2:
            continue
        loaded = [read(p) for p in rows["predictions"]]
        sums = np.zeros((rows.height, 2))
        for i, j in itertools.combinations(range(rows.height), 2):
            pair = (disagreement(_t(loaded[i][0]), _t(loaded[j][0])),
                    js_divergence(_t(loaded[i][1]), _t(loaded[j][1])))
            sums[i] += pair
            sums[j] += pair
        for (tid, epoch), total in zip(rows.select("trial_id", "epoch").iter_rows(), sums):
            values[(tid, epoch)] = tuple(total / (rows.height - 1))
    if not values:
        return df
    found = pl.DataFrame([(t, e, d, j) for (t, e), (d, j) in values.items()],
                         schema={"trial_id": pl.String, "epoch": pl.Int64, "_dis": pl.Float64, "_jsd": pl.Float64},
                         orient="row")
    out = df.with_columns(pl.col("epoch").cast(pl.Int64)).join(found, on=["trial_id", "epoch"], how="left")
    fill = lambda col, new: (pl.coalesce(new, col) if col in df.columns else pl.col(new)).alias(col)  # noqa: E731
    return out.with_columns(fill("disagreement", "_dis"), fill("jsd", "_jsd")).drop("_dis", "_jsd")


def _t(a: np.ndarray):
    import torch
    return torch.from_numpy(a)
