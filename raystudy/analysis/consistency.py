"""Functional consistency (docs/PROTOCOL.md): how much models of one configuration that differ only in their
seed agree on the test set. Computed from the predictions the measuring stage stores beside each row; the
regime-vs-base test of consistency runs on the pairs themselves (``consistency_tests``)."""
from __future__ import annotations

import io
import itertools
import warnings
from typing import Callable

import numpy as np
import polars as pl

from raystudy.analysis.aggregate import comparison_keys
from raystudy.analysis.inference import swap_test
from raystudy.analysis.results import final_rows, ok_rows
from raystudy.layout import predictions_file
from raystudy.safety.consistency import disagreement, js_divergence
from raystudy.storage import Store

Read = Callable[[str], tuple[np.ndarray, np.ndarray]]  # relative path -> (classes (N,), probabilities (N, C))


def read_predictions(store: Store, relative: str) -> tuple[np.ndarray, np.ndarray]:
    """(classes (N,) int64, probabilities (N, C) float64 renormalised after float16 storage) of the predictions
    a row records (its path relative to the study root). ValueError, nothing read, unless the path names a
    predictions file inside the study's results/ folder (``layout.predictions_file``): rows are data anyone
    with write access to the bucket could have crafted. Never unpickles."""
    with np.load(io.BytesIO(store.read_bytes(predictions_file(store, relative))), allow_pickle=False) as f:
        pred, probs = f["pred"].astype(np.int64), f["probs"].astype(np.float64)
    return pred, probs / probs.sum(axis=1, keepdims=True)


def readable(df: pl.DataFrame, read: Read) -> tuple[pl.DataFrame, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The rows of ``df`` whose stored predictions read (a path outside the study, a missing or damaged file is
    left out with a warning naming it, never followed), and the predictions by path. Cost: reads each file once."""
    loaded: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for path in df["predictions"].drop_nulls().unique(maintain_order=True):
        try:
            loaded[path] = read(path)
        except Exception as err:  # a crafted or damaged row must not stop the report  # noqa: BLE001
            warnings.warn(f"predictions {path!r} skipped: {str(err).splitlines()[0] if str(err) else type(err).__name__}",
                          stacklevel=2)
    return df.filter(pl.col("predictions").is_in(list(loaded))), loaded


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
    stored, files = readable(df.filter(pl.col("predictions").is_not_null()), read)
    for group in stored.partition_by(keys, maintain_order=True) if not stored.is_empty() else []:
        rows = group.unique(subset=["seed"], keep="last").sort("seed")
        if rows.height < 2:
            continue
        loaded = [files[p] for p in rows["predictions"]]
        sums = np.zeros((rows.height, 2))
        for i, j in itertools.combinations(range(rows.height), 2):
            pair = (disagreement(loaded[i][0], loaded[j][0]),
                    js_divergence(loaded[i][1], loaded[j][1]))
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


def consistency_tests(df: pl.DataFrame, read: Read) -> pl.DataFrame:
    """Regime vs base on functional consistency, one row per configuration x regime x metric (disagreement,
    jsd), at the final checkpoint (status ok), over the seeds whose predictions both regimes stored.

    For k such seeds the 2k models' pairwise dissimilarities form one (2k, 2k) matrix, cross pairs (base of one
    seed, regime of another) included, and ``inference.swap_test`` compares the mean over the regime's k (k - 1)
    / 2 pairs with base's, swapping the two models of a subset of seeds for its null distribution: exact, every
    pair counted once. Columns: the configuration and condition keys of ``aggregate.comparison_keys``, metric,
    n_pairs (seeds), mean_diff (regime minus base mean pairwise value), p (one-sided, "less": the regime's models
    agree more), p_reverse, method. Empty without two shared seeds anywhere. Cost: (2k)(2k - 1) / 2 comparisons
    of N x C arrays per regime (base's own pairs computed once), each predictions file read once (one that does
    not read is left out with a warning, see ``readable``).
    """
    rows = ok_rows(final_rows(df))
    if rows.is_empty() or "predictions" not in rows.columns or "regime" not in rows.columns:
        return pl.DataFrame()
    rows, loaded = readable(rows.filter(pl.col("predictions").is_not_null()), read)
    if rows.is_empty():
        return pl.DataFrame()
    config, condition = comparison_keys(df)
    pair_cache: dict[tuple[str, str], tuple[float, float]] = {}

    def pair(a: str, b: str) -> tuple[float, float]:
        key = (a, b) if a <= b else (b, a)
        if key not in pair_cache:
            pa, pb = loaded[key[0]], loaded[key[1]]
            pair_cache[key] = (disagreement(pa[0], pb[0]), js_divergence(pa[1], pb[1]))
        return pair_cache[key]

    out = []
    for base in rows.filter(pl.col("regime") == "base").partition_by(config, maintain_order=True):
        base = base.unique(subset=["seed"], keep="last")
        named = base.select(config).row(0, named=True)
        match = [pl.col(k).eq_missing(v) for k, v in named.items()]
        others = rows.filter(pl.col("regime") != "base", *match)
        for regime in (others.partition_by(condition, maintain_order=True) if not others.is_empty() else []):
            regime = regime.unique(subset=["seed"], keep="last")
            both = base.select("seed", b="predictions").join(regime.select("seed", r="predictions"), on="seed")
            both = both.sort("seed")
            k = both.height
            if k < 2:
                continue
            paths = both["b"].to_list() + both["r"].to_list()
            matrices = np.zeros((2, 2 * k, 2 * k))
            for i, j in itertools.combinations(range(2 * k), 2):
                matrices[:, i, j] = matrices[:, j, i] = pair(paths[i], paths[j])
            test = swap_test(matrices)
            keys = {**named, **regime.select(condition).row(0, named=True)}
            for n, metric in enumerate(("disagreement", "jsd")):
                out.append({**keys, "metric": metric, "n_pairs": k, "mean_diff": float(test.statistic[n]),
                            "p": float(test.p_less[n]), "p_reverse": float(test.p_greater[n]),
                            "method": "exact swap test over seeds' pairs of models"})
    if not out:
        return pl.DataFrame()
    return pl.DataFrame(out, infer_schema_length=None)
