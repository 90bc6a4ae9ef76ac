"""Extreme Hessian eigenvalues by thick-restart block Lanczos with full reorthogonalisation.

Lanczos finds the top-k eigenvalues in far fewer Hessian-vector products than the deflated power
iteration of PyHessian: every product enlarges one Krylov space that all k pairs share. Each new block
is orthogonalised twice against the whole basis (CGS2), so no ghost copies appear; when the basis would
outgrow ``max_basis`` (or the memory budget) it is compressed to the best Ritz vectors and continued
(thick restart, Wu & Simon 2000). A single start vector sees one copy of a repeated eigenvalue: use
``block_size`` >= the multiplicity you need to resolve.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor, nn

from raystudy.geometry.data import Batch, LossFn
from raystudy.geometry.hvp import as_operator
from raystudy.geometry.operator import LinearOperator, Products
from raystudy.geometry.tall import tall_svd

WHICH = ("largest", "smallest", "both")
BASIS_MEMORY_BYTES = 2**30  # default cap on the stored Krylov basis (ResNet-18 float32: ~23 vectors)


@dataclass(frozen=True)
class EigenResult:
    """Ritz pairs of H, eigenvalues ascending.

    eigenvalues, residuals, converged: (n,) with n = k, or 2k for which="both"; residuals[i] =
    ||H y_i - eigenvalues[i] y_i|| for the unit Ritz vector y_i, which bounds |eigenvalue error|.
    eigenvectors: (dim, n) or None. n_hvp: Hessian-vector products spent; wall_s: seconds.
    """

    eigenvalues: Tensor
    residuals: Tensor
    converged: Tensor
    eigenvectors: Tensor | None
    n_hvp: int
    wall_s: float
    backend: str

    @property
    def lambda_max(self) -> float:
        return float(self.eigenvalues[-1])

    @property
    def lambda_min(self) -> float:
        return float(self.eigenvalues[0])


def orthogonalise(W: Tensor, V: Tensor) -> Tensor:
    """Remove V's span from W's rows in place, twice (classical Gram-Schmidt, CGS2).

    Args:
        W: (p, dim) rows, modified in place.
        V: (j, dim) orthonormal rows, same device and dtype.

    Returns:
        (j, p) coefficients C (both passes summed): W_before = W_after + C.T @ V.

    Cost: 4 j p dim multiply-adds; memory: two (j, p) matrices.
    """
    C = V @ W.T
    W -= C.T @ V
    C2 = V @ W.T
    W -= C2.T @ V
    return C + C2


def _next_block(W: Tensor, V: Tensor, n_out: int, floor: float, gen: torch.Generator
                ) -> tuple[Tensor, Tensor]:
    """Orthonormal rows Q (n_out, dim) spanning W's rows (already orthogonal to V) and R (float64,
    CPU) with W ~= R.T @ Q. Directions below ``floor`` are an invariant subspace found: they are
    replaced by random vectors with zero coupling, so the iteration continues in the rest of the
    space."""
    Q, S, Zh = tall_svd(W)  # rank-revealing, unlike a bare unpivoted QR; no tall SVD (cuSOLVER)
    r = min(int((S > floor).sum()), n_out)
    Q, R = Q[:r].contiguous(), S[:r, None] * Zh[:r]
    if r < n_out:
        fill = torch.randn(n_out - r, W.shape[1], generator=gen, dtype=W.dtype).to(W.device)
        for _ in range(2):
            orthogonalise(fill, torch.cat([V, Q]))
            fill = torch.linalg.qr(fill.T).Q.T
        Q, R = torch.cat([Q, fill]), torch.cat([R, R.new_zeros(n_out - r, R.shape[1])])
    orthogonalise(Q, V)  # keep the basis orthonormal to working precision
    return Q, R


def _wanted(theta: Tensor, k: int, which: str) -> Tensor:
    """Indices into ascending ``theta`` of the k (each end for "both") wanted Ritz values."""
    n = len(theta)
    idx = {"largest": range(n - k, n), "smallest": range(k), "both": [*range(k), *range(n - k, n)]}
    return torch.tensor(list(idx[which]), dtype=torch.long)


def lanczos_eigenvalues(op: LinearOperator, k: int = 1, which: str = "largest", tol: float = 1e-4,
                        max_hvp: int | None = None, seed: int = 0, block_size: int = 1,
                        max_basis: int | None = None, eigenvectors: bool = False,
                        memory_bytes: int = BASIS_MEMORY_BYTES) -> EigenResult:
    """The k largest / smallest (most negative) / both eigenvalues of a symmetric operator.

    A pair is converged when ||H y - θ y|| <= max(tol |θ|, 100 eps ||H||), so its relative error is at
    most ``tol`` (in practice ~res²/gap, far less); the floor is what working precision can resolve.
    Cost: ``block_size`` Hv per iteration until every wanted pair converges or ``max_hvp`` (default
    max(1000, 30 max_basis)) is spent; memory: (max_basis + block_size) vectors of ``op.dim``.

    Args:
        op: a symmetric ``LinearOperator`` (n x n): a ``HessianOperator``, a ``DenseOperator``, a
            square torch matrix (a numpy one is wrapped).
        k: eigenvalues wanted at each requested end.
        which: "largest", "smallest" or "both".
        tol: relative residual tolerance of a converged pair.
        max_hvp: product budget (default above).
        seed: seeds the CPU generator of the start block (the global RNG is untouched).
        block_size: probes per product block (>= the multiplicity to resolve).
        max_basis: Krylov basis rows kept before a thick restart (default from k, block_size
            and ``memory_bytes``).
        eigenvectors: also return the Ritz vectors.
        memory_bytes: cap on the stored basis.

    Returns:
        :class:`EigenResult`: eigenvalues (k, or 2k for "both"; ascending, in the operator's units:
        loss / parameter² for a Hessian), residuals, converged flags, eigenvectors (n, k) or None,
        n_hvp (products spent), wall_s, backend.

    Raises:
        ValueError: bad which/k/tol/block_size, a basis too small, or a non-finite product.
    """
    start, op = time.perf_counter(), Products(op)
    dim, b = op.dim, block_size
    if which not in WHICH:
        raise ValueError(f"which={which!r}: expected one of {WHICH}")
    n_want = 2 * k if which == "both" else k
    if k < 1 or n_want > dim:
        raise ValueError(f"k={k} ({which}) must be between 1 and the dimension {dim}")
    if tol <= 0 or b < 1:
        raise ValueError(f"tol={tol} and block_size={b} must be positive")
    fit = max(memory_bytes // (dim * op.dtype.itemsize) - b, 1)
    m = min(dim, max_basis or min(max(40, 3 * n_want + 2 * b), fit))
    if m < dim and m < n_want + 2 * b:
        raise ValueError(f"max_basis={m} (memory_bytes={memory_bytes}) is too small for "
                         f"{n_want} eigenvalues with block_size={b}: need {n_want + 2 * b}")
    max_hvp = max_hvp or max(1000, 30 * m)
    gen = torch.Generator().manual_seed(seed)
    eps = torch.finfo(op.dtype).eps
    V = torch.zeros(m + b, dim, dtype=op.dtype, device=op.device)
    T = torch.zeros(m + b, m + b, dtype=torch.float64)
    V[:b] = _next_block(torch.randn(b, dim, generator=gen, dtype=op.dtype).to(op.device),
                        V[:0], b, 0.0, gen)[0]
    j, p = 0, b  # basis rows V[:j] have been multiplied; V[j:j+p] is the pending block
    while True:
        W = op.apply(V[j:j + p])
        if not torch.isfinite(W).all():
            raise ValueError("a Hessian-vector product is not finite (NaN/inf in the Hessian)")
        C = orthogonalise(W, V[:j + p]).double().cpu()
        T[:j + p, j:j + p], T[j:j + p, :j + p] = C, C.T
        T[j:j + p, j:j + p] = (C[j:] + C[j:].T) / 2
        j += p
        theta, S = torch.linalg.eigh(T[:j, :j])
        scale = float(theta.abs().max())
        p_next = min(b, dim - j)
        Q, R = _next_block(W, V[:j], p_next, 100 * eps * scale, gen)
        coupling = torch.zeros(p_next, j, dtype=torch.float64)
        coupling[:, j - p:] = R.double().cpu()
        res = (coupling @ S).norm(dim=0)  # residual of every Ritz pair
        want = _wanted(theta, min(k, j // (2 if which == "both" else 1)), which)
        ok = res[want] <= torch.maximum(tol * theta[want].abs(), torch.tensor(100 * eps * scale))
        spent = op.n_hvp
        if p_next == 0 or (len(want) == n_want and bool(ok.all())) or spent + p_next > max_hvp:
            break
        if j + p_next > m:  # the next block would not fit: thick restart
            n_keep = min(j - p_next, n_want + max(b, (m - n_want) // 2))
            keep = _wanted(theta, n_keep // 2 if which == "both" else n_keep, which)
            V[:len(keep)] = S[:, keep].T.to(op.dtype).to(op.device) @ V[:j]
            T.zero_()
            T[:len(keep), :len(keep)] = torch.diag(theta[keep])
            coupling, j = coupling @ S[:, keep], len(keep)
        V[j:j + p_next] = Q
        T[j:j + p_next, :j], T[:j, j:j + p_next] = coupling, coupling.T
        p = p_next
    vectors = (S[:, want].T.to(op.dtype).to(op.device) @ V[:j]).T if eigenvectors else None
    if p_next == 0:  # the basis spans the whole space: the Ritz pairs are exact
        res[:] = 0.0
        ok = torch.ones(len(want), dtype=torch.bool)
    return EigenResult(theta[want], res[want], ok, vectors, op.n_hvp,
                       time.perf_counter() - start, op.backend)


def hessian_eigenvalues(model: nn.Module | LinearOperator, loss_fn: LossFn | None = None,
                        data: Iterable[Batch] | None = None, k: int = 1, which: str = "largest",
                        tol: float = 1e-4, max_hvp: int | None = None, seed: int = 0,
                        block_size: int = 1, eigenvectors: bool = False, **op_kwargs) -> EigenResult:
    """Top-k / bottom-k / both-ends eigenvalues of the loss Hessian of ``model`` on ``data``.

    Args:
        model: the network, or a prebuilt ``LinearOperator`` (a ``HessianOperator`` shared by
            several estimators, a dense matrix; then omit loss_fn, data and op_kwargs).
        loss_fn, data: see ``HessianOperator``.
        k, which, tol, max_hvp, seed, block_size, eigenvectors: see ``lanczos_eigenvalues``.
        **op_kwargs: ``HessianOperator`` options (params, dtype, backend, ...).

    Returns:
        :class:`EigenResult` (eigenvalues in loss / parameter² units), wall_s including the
        operator's construction.

    Cost: as ``lanczos_eigenvalues`` (+ one forward pass to build the operator).
    """
    start = time.perf_counter()
    op = as_operator(model, loss_fn, data, **op_kwargs)
    out = lanczos_eigenvalues(op, k=k, which=which, tol=tol, max_hvp=max_hvp, seed=seed,
                              block_size=block_size, eigenvectors=eigenvectors)
    return EigenResult(out.eigenvalues, out.residuals, out.converged, out.eigenvectors, out.n_hvp,
                       time.perf_counter() - start, out.backend)
