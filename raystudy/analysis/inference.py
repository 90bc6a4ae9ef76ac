"""The exact tests behind the verdicts: each permutes only what the design randomised, so its false-positive
rate is at most its level for any number of seeds (docs/PROTOCOL.md; README, "Verdicts").

- ``tau_test``: Kendall tau-b between x and y within each seed, averaged over seeds. Null: the x values of a
  seed (target complexity, boundary factor) were assigned to its points at random. Families A and B.
- ``sign_flip_test``: the Wilcoxon signed-rank statistic of paired differences (regime - base, one per seed),
  as the rank-biserial correlation. Null: each difference is symmetric about 0 (within a seed, which of its two
  models is "regime" is exchangeable). Family C, per-seed metrics.
- ``swap_test``: mean pairwise dissimilarity (disagreement, JSD) among regime models minus among base models.
  Null: regime and base models of a seed exchangeable; swapping them changes which pairs are compared, so
  every pair counts once and the dependence between a seed's pairs is kept. Family C, consistency.
- ``median_interval``: distribution-free interval for the median of per-seed values (order statistics).
- ``holm``: Holm's step-down adjustment (family-wise error under any dependence).

Every test takes a batch of outcomes with the same design (leading axis: simulated or observed studies) and
returns p-values as P(T* >= T) (or <=) under the permutation distribution, the identity included: exact when
every permutation is enumerated, else from ``n_perm`` random ones as (1 + #{T* >= T}) / (1 + n_perm), valid at
every level too (Phipson & Smyth 2010). The random permutations come from ``numpy.random.default_rng(seed)``
alone and depend only on the design, so a study and its simulated copies see the same ones. numpy only.
"""
from __future__ import annotations

import collections
import functools
import itertools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import stats

N_PERM = 9999  # random permutations when the exact distribution is too large to enumerate
MAX_ENUMERATE = 2**14  # enumerate every permutation up to this many (cost: this many statistics per study)
PAIR_CELLS = 2**22  # permutation x pair cells held at once by tau_test (~50 MB of temporaries)
FENWICK_FROM = 64  # distinct x values from which the sorted count uses a Fenwick tree rather than prefix counts
# Points in a seed from which tau_test counts pairs by sorting rather than by sign matrices (measured faster from
# about 16 points on; both give the same bits).
SORTED_FROM = 16
THREADS = 2  # worker threads of tau_test's per-seed sums (the report's machine: 2 cores)
_EPS = 1e-9  # permuted statistics within this of the observed one count as ties (float round-off)


@dataclass(frozen=True)
class PermutationTest:
    """Per study (shape (m,)): ``statistic``; ``p_greater`` = P(T* >= T), ``p_less`` = P(T* <= T); NaN where
    the statistic is undefined. ``n_perm``: permutations behind each p (the identity included); ``exact``:
    whether they are all of them."""
    statistic: np.ndarray
    p_greater: np.ndarray
    p_less: np.ndarray
    n_perm: int
    exact: bool


@functools.lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    """The worker threads of tau_test, started on first use and shared by every call (daemon-like: idle ones
    cost nothing and end with the interpreter)."""
    return ThreadPoolExecutor(THREADS, thread_name_prefix="tau")


os.register_at_fork(after_in_child=_pool.cache_clear)  # a forked child has none of the threads: it starts its own


def _p_values(observed: np.ndarray, permuted: np.ndarray, exact: bool) -> tuple[np.ndarray, np.ndarray]:
    """(p_greater, p_less) of ``observed`` (m,) against ``permuted`` (m, B); B counts the identity when exact."""
    ge = (permuted >= observed[:, None] - _EPS).sum(1)
    le = (permuted <= observed[:, None] + _EPS).sum(1)
    if exact:
        n = permuted.shape[1]
        return ge / n, le / n
    n = permuted.shape[1] + 1
    return (ge + 1) / n, (le + 1) / n


def _batch(y: np.ndarray, n: int) -> np.ndarray:
    y = np.asarray(y, dtype=float)
    y = y[None] if y.ndim == 1 else y
    if y.ndim != 2 or y.shape[1] != n:
        raise ValueError(f"expected outcomes of shape (n,) or (m, n) with n = {n}, got {np.shape(y)}")
    return y


def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n, k=1)


def _permuted_sums(sy: np.ndarray, y: np.ndarray, xs: np.ndarray, perms: np.ndarray, i: np.ndarray, j: np.ndarray
                   ) -> np.ndarray:
    """(m, B): for each permutation b, sum over pairs p of sy[:, p] * sgn(xs[perms[b, i_p]] - xs[perms[b, j_p]])
    (concordant - discordant pairs), ``y`` (m, k) the outcomes behind ``sy``.

    Small seeds: products of (B, pairs) sign matrices, in chunks of PAIR_CELLS cells. Larger ones (SORTED_FROM
    points or more): per outcome, the points in the order of y and a Fenwick tree of x ranks per permutation
    count, for each point, the earlier points with smaller and larger x: O(B k log k) time and O(B k) memory
    instead of O(B k^2) (20 GB for 9,999 permutations of 700 points). Both count integers exactly, so both give
    the same bits."""
    k = len(xs)
    if k >= SORTED_FROM and np.isfinite(y).all():
        return np.stack([_counted_sums(row, xs, perms) for row in y]).astype(float)
    out = np.empty((sy.shape[0], len(perms)))
    chunk = max(1, PAIR_CELLS // max(len(i), 1))
    sy32 = sy.astype(np.float32)  # sums of -1/0/1 over < 2^24 pairs: exact in float32
    for start in range(0, len(perms), chunk):
        xp = xs[perms[start:start + chunk]]  # (chunk, k): x as permuted within this seed
        out[:, start:start + chunk] = sy32 @ np.sign(xp[:, i] - xp[:, j]).astype(np.float32).T
    return out


def _counted_sums(y: np.ndarray, xs: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """(B,) concordant - discordant pairs of (x permuted by each row of ``perms``, y), ties counting 0."""
    order = np.argsort(y, kind="stable")
    ys = y[order]
    ranks = np.unique(xs, return_inverse=True)[1].astype(np.int64)
    n_ranks = int(ranks.max()) + 1
    xr = ranks[perms][:, order]  # (B, k): the x rank given to the t-th point in y order
    rows = np.arange(len(perms))
    if n_ranks < FENWICK_FROM:  # few distinct x (targets, factors): counts below each rank, O(B x ranks) a step
        # prefix[b, r]: inserted with rank < r (int32: at most k), read through flat indices (faster than 2-D
        # fancy indexing); each insert adds the bool row "rank > r" from a reused buffer (no temporaries).
        prefix = np.zeros((len(perms), n_ranks + 1), dtype=np.int32)
        flat, base = prefix.reshape(-1), rows * (n_ranks + 1)
        cols, above = np.arange(n_ranks + 1), np.empty(prefix.shape, dtype=bool)

        def below(r: np.ndarray) -> np.ndarray:
            return flat[base + r]

        def insert(r: np.ndarray) -> None:
            np.greater(cols, r[:, None], out=above)
            prefix[...] += above

        return _concordance(ys, xr, below, insert)
    tree = np.zeros((len(perms), n_ranks + 2), dtype=np.int64)  # Fenwick tree; index n_ranks + 1 is a sink
    steps = int(n_ranks).bit_length() + 1

    def below(r: np.ndarray) -> np.ndarray:  # how many inserted points have an x rank < r
        total, idx = np.zeros(len(r), dtype=np.int64), r.copy()
        for _ in range(steps):
            total += tree[rows, idx]  # tree[:, 0] stays 0
            idx -= idx & -idx
        return total

    def insert(r: np.ndarray) -> None:
        idx = r + 1
        for _ in range(steps):
            tree[rows, idx] += 1
            idx = np.where(idx <= n_ranks, idx + (idx & -idx), n_ranks + 1)
            idx = np.minimum(idx, n_ranks + 1)
        tree[:, n_ranks + 1] = 0

    return _concordance(ys, xr, below, insert)


def _concordance(ys: np.ndarray, xr: np.ndarray, below, insert) -> np.ndarray:
    """(B,) concordant - discordant pairs, from the points in y order (``ys`` sorted, ``xr`` (B, k) their x ranks)
    and a rank counter: ``below(r)`` = inserted points with an x rank < r, ``insert(r)`` adds one per row."""
    total = np.zeros(len(xr), dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, ys[1:] != ys[:-1]])
    for a, b in zip(starts, [*starts[1:], len(ys)]):  # points tied in y: counted against earlier groups only
        for t in range(a, b):
            less, not_more = below(xr[:, t]), below(xr[:, t] + 1)
            total += less - (a - not_more)
        for t in range(a, b):
            insert(xr[:, t])
    return total


def tau_test(x: np.ndarray, y: np.ndarray, seeds: np.ndarray, n_perm: int = N_PERM, seed: int = 0
             ) -> PermutationTest:
    """Mean over seeds of Kendall's tau-b between ``x`` and ``y`` within each seed, and its permutation p-values.

    Args:
        x: (n,) the design variable (complexity, factor), fixed across studies.
        y: (n,) or (m, n) outcomes (a sharpness metric) of m studies with this design.
        seeds: (n,) the seed of each point; tau is taken within each seed, seeds where x or y is constant
            are left out of the mean (NaN when none is left).
        n_perm: random within-seed permutations of x when there are more than ``MAX_ENUMERATE`` in all.
        seed: seed of those permutations.
    Returns:
        ``PermutationTest`` of shape (m,). Tau-b of a seed: sum over its pairs of sgn(dx) sgn(dy), divided by
        sqrt(#pairs untied in x x #pairs untied in y), the same value as ``scipy.stats.kendalltau``.
    Cost: O(B sum_s n_s^2 m) for B permutations and n_s points per seed; ~50 ms for 7 points x 10 seeds, B 9999.
    """
    x, seeds = np.asarray(x, dtype=float), np.asarray(seeds)
    y = _batch(y, len(x))
    groups = [np.flatnonzero(seeds == s) for s in np.unique(seeds)]
    sizes = [len(g) for g in groups]
    total = math.prod(math.factorial(k) for k in sizes)
    exact = total <= MAX_ENUMERATE
    rng = np.random.default_rng(seed)
    tau_sum = np.zeros(y.shape[0])
    tau_sum_perm = np.zeros((y.shape[0], total if exact else n_perm))
    used = np.zeros(y.shape[0])
    # Exact: every combination of per-seed permutations, as the product of each seed's list of permutations.
    orders = (list(itertools.product(*(list(itertools.permutations(range(k))) for k in sizes))) if exact else None)
    # Each seed's permuted sums run in a worker thread (the counting loop is numpy on B-long rows, which releases
    # the GIL: two seeds at once on two cores), at most THREADS ahead; the permutations are still drawn here in
    # seed order and the sums added in seed order, so the result is bit-identical to the one-thread loop.
    pending: collections.deque = collections.deque()

    def add_next() -> None:
        sums, ok, norm = pending.popleft()
        with np.errstate(invalid="ignore", divide="ignore"):
            tau_sum_perm[...] += np.where(ok[:, None], sums.result() / norm[:, None], 0.0)

    for s, idx in enumerate(groups):
        i, j = _pairs(len(idx))
        sy = np.sign(y[:, idx[i]] - y[:, idx[j]])  # (m, P)
        xs = x[idx]
        if exact:
            perms = np.array([o[s] for o in orders], dtype=int).reshape(len(orders), len(idx))
        else:
            perms = rng.permuted(np.tile(np.arange(len(idx)), (n_perm, 1)), axis=1)
        sx = np.sign(xs[i] - xs[j])
        norm = np.sqrt(float(np.count_nonzero(sx)) * np.count_nonzero(sy, axis=1))  # ties are kept by permuting
        ok = norm > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            tau_sum += np.where(ok, (sy @ sx) / norm, 0.0)
        pending.append((_pool().submit(_permuted_sums, sy, y[:, idx], xs, perms, i, j), ok, norm))
        used += ok
        if len(pending) > THREADS:
            add_next()
    while pending:
        add_next()
    with np.errstate(invalid="ignore", divide="ignore"):
        statistic = np.where(used > 0, tau_sum / used, np.nan)
        permuted = tau_sum_perm / used[:, None]
    p_greater, p_less = _p_values(statistic, permuted, exact)
    undefined = used == 0
    p_greater[undefined] = p_less[undefined] = np.nan
    return PermutationTest(statistic, p_greater, p_less, total if exact else n_perm + 1, exact)


@functools.lru_cache(maxsize=64)
def _sign_patterns(k: int, n_perm: int, seed: int) -> tuple[np.ndarray, bool]:
    """(B, k) 0/1 patterns: all 2^k when that is at most MAX_ENUMERATE (first row all zero = the identity),
    else n_perm random ones from ``default_rng(seed)``. Cached (read-only): a large study runs hundreds of tests
    with the same number of seeds, and drawing 9,999 x k bits costs ~15 ms each time."""
    if 2**k <= MAX_ENUMERATE:
        patterns, exact = (np.arange(2**k)[:, None] >> np.arange(k)[None, :]) & 1, True
    else:
        patterns, exact = np.random.default_rng(seed).integers(0, 2, size=(n_perm, k)), False
    patterns.setflags(write=False)
    return patterns, exact


@functools.lru_cache(maxsize=64)
def _flips(k: int, n_perm: int, seed: int) -> tuple[np.ndarray, bool]:
    """``_sign_patterns`` as (B, k) multipliers: +1 keeps a sign, -1 flips it (cached, read-only)."""
    patterns, exact = _sign_patterns(k, n_perm, seed)
    flips = 1.0 - 2.0 * patterns
    flips.setflags(write=False)
    return flips, exact


def signed_ranks(d: np.ndarray) -> np.ndarray:
    """(m, n) mid-ranks of |d| among each row's non-zero entries, 0 where d == 0 (Wilcoxon's zero_method
    "wilcox": zero differences carry no rank)."""
    d = np.asarray(d, dtype=float)
    zeros = (d == 0).sum(axis=-1, keepdims=True)
    ranks = stats.rankdata(np.abs(d), axis=-1) - zeros  # zeros take the lowest ranks: shift them out
    return np.where(d == 0, 0.0, ranks)


def sign_flip_test(d: np.ndarray, n_perm: int = N_PERM, seed: int = 0) -> PermutationTest:
    """The exact Wilcoxon signed-rank test of paired differences, by enumerating sign flips.

    Args:
        d: (n,) or (m, n) differences regime - base, one per seed (NaN not allowed: drop unpaired seeds first).
    Returns:
        ``PermutationTest`` of shape (m,) whose statistic is the matched-pairs rank-biserial correlation
        (R+ - R-) / (R+ + R-) over the non-zero differences (mid-ranks for ties; NaN when every d is 0, with
        p = 1 both ways). p_greater small: regime larger. Ties and zeros are handled exactly (conditionally on
        |d|), unlike the normal approximation scipy falls back to. Smallest attainable p: 2^-(non-zero d).
    Cost: 2^n statistics of n terms up to n = 14, else ``n_perm``; microseconds for 10 seeds.
    """
    d = _batch(d, np.shape(d)[-1])
    if np.isnan(d).any():
        raise ValueError("differences contain NaN: drop the seeds without a pair first")
    r = signed_ranks(d)
    flips, exact = _flips(d.shape[1], n_perm, seed)  # (B, n)
    observed = (np.sign(d) * r).sum(1)
    permuted = (np.sign(d) * r) @ flips.T
    total = r.sum(1)
    p_greater, p_less = _p_values(observed, permuted, exact)
    with np.errstate(invalid="ignore", divide="ignore"):
        statistic = np.where(total > 0, observed / total, np.nan)
    return PermutationTest(statistic, p_greater, p_less, len(flips) if exact else n_perm + 1, exact)


def swap_test(dissimilarity: np.ndarray, n_perm: int = N_PERM, seed: int = 0) -> PermutationTest:
    """Mean pairwise dissimilarity among regime models minus among base models, with within-seed swap p-values.

    Args:
        dissimilarity: (2k, 2k) or (m, 2k, 2k) symmetric matrices over the models base_1..base_k, then
            regime_1..regime_k (row s and row k + s are the same seed), e.g. test-set disagreement or JSD.
    Returns:
        ``PermutationTest`` of shape (m,): statistic = mean_{i<j} D[R_i, R_j] - mean_{i<j} D[B_i, B_j];
        p_less small: the regime's models agree more with each other than base's do. Each permutation swaps
        the regime and base models of a subset of seeds; the pairs compared then include cross pairs
        (base of one seed with regime of another), which is why the whole matrix is needed. Smallest
        attainable p: 2^-k (swapping every seed negates the statistic). NaN for k < 2.
    Cost: 2^k x k^2 / 2 multiply-adds up to k = 14, else ``n_perm`` x k^2 / 2.
    """
    dm = np.asarray(dissimilarity, dtype=float)
    dm = dm[None] if dm.ndim == 2 else dm
    if dm.ndim != 3 or dm.shape[1] != dm.shape[2] or dm.shape[1] % 2:
        raise ValueError(f"expected (2k, 2k) or (m, 2k, 2k) matrices, got {np.shape(dissimilarity)}")
    k = dm.shape[1] // 2
    m = dm.shape[0]
    if k < 2:
        nan = np.full(m, np.nan)
        return PermutationTest(nan, nan.copy(), nan.copy(), 1, True)
    i, j = _pairs(k)
    rr, bb = dm[:, k + i, k + j], dm[:, i, j]
    rb, br = dm[:, k + i, j], dm[:, i, k + j]  # regime of seed i with base of seed j, and the reverse
    patterns, exact = _sign_patterns(k, n_perm, seed)
    a = patterns.astype(float)
    ai, aj = a[:, i], a[:, j]  # (B, P): 1 = that seed's two models swapped
    # Regime slot pair (i, j) holds RR when neither seed is swapped, BB when both are, RB / BR when one is;
    # the base slot the opposite; their difference per pair:
    same = (1 - ai) * (1 - aj) - ai * aj  # coefficient of RR - BB
    cross = (1 - ai) * aj - ai * (1 - aj)  # coefficient of RB - BR
    n_pairs = len(i)
    observed = (rr - bb).sum(1) / n_pairs
    permuted = ((rr - bb) @ same.T + (rb - br) @ cross.T) / n_pairs
    p_greater, p_less = _p_values(observed, permuted, exact)
    return PermutationTest(observed, p_greater, p_less, len(patterns) if exact else n_perm + 1, exact)


def smallest_p(n: int) -> float:
    """Smallest attainable one-sided p of ``sign_flip_test`` with n non-zero differences, or of ``swap_test``
    with n seeds: 2^-n."""
    return 0.5**n


def median_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float] | None:
    """Distribution-free interval for the median of i.i.d. per-seed values: [v_(r), v_(n+1-r)] with the largest r
    whose coverage 1 - 2 P(Binomial(n, 1/2) <= r - 1) is at least ``level`` (at least that for any continuous
    distribution, and for discrete ones too: the interval is closed). None when even [min, max] falls short:
    fewer than 6 values at 95%. Cost: a sort."""
    v = np.sort(np.asarray(values, dtype=float))
    v = v[np.isfinite(v)]
    n = len(v)
    best = None
    for r in range(1, n // 2 + 1):
        if 1 - 2 * stats.binom.cdf(r - 1, n, 0.5) >= level:
            best = r
    return None if best is None else (float(v[best - 1]), float(v[n - best]))


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values along the last axis (family-wise error under any dependence);
    NaN stays NaN and does not count towards the family."""
    p = np.asarray(p, dtype=float)
    flat = p.reshape(-1, p.shape[-1]) if p.ndim else p.reshape(1, 1)
    out = np.full(flat.shape, np.nan)
    for row, (src, dst) in enumerate(zip(flat, out)):
        ok = np.flatnonzero(np.isfinite(src))
        if not len(ok):
            continue
        order = ok[np.argsort(src[ok], kind="stable")]
        scaled = src[order] * (len(ok) - np.arange(len(ok)))
        dst[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out.reshape(p.shape)
