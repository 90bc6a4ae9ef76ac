"""Factorisations of blocks of k vectors of length dim (k << dim) without a tall SVD or eigensolver.

cuSOLVER's SVD of a tall matrix fails for network-sized vectors (ResNet-18's 11M x 8 on an H200:
CUSOLVER_STATUS_INVALID_VALUE from the gesvdj buffer-size query). So a block is factorised by a
Householder QR of the tall matrix (backward stable at any height), and only the small k x k factor
goes through an SVD, on the CPU in float64. The singular values are those of the block to the
block's working precision: the factorisation stays rank-revealing.
"""
from __future__ import annotations

import torch
from torch import Tensor


def tall_svd(A: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD of the rows of ``A``: ``A = Zh.T @ diag(S) @ Q``.

    Args:
        A: (k, dim) rows, k << dim.

    Returns:
        Q (m, dim) with orthonormal rows (A's device and dtype), S (m,) descending and Zh (m, k),
        both float64 on the CPU; m = min(k, dim).

    Cost: one QR of the (dim x k) matrix (O(dim k²) on A's device), an SVD of an (m x k) matrix
    on the CPU, one (m x m) @ (m x dim) product.
    """
    Q0, R0 = torch.linalg.qr(A.T)  # (dim, m), (m, k): the only operation on the tall matrix
    U, S, Zh = torch.linalg.svd(R0.double().cpu(), full_matrices=False)
    return U.T.to(A.dtype).to(A.device) @ Q0.T, S, Zh


def orthonormal_basis(A: Tensor, floor: float) -> Tensor:
    """An orthonormal basis of the significant span of A's rows.

    Args:
        A: (k, dim) rows.
        floor: singular values at or below it are dropped (rounding noise), in A's units.

    Returns:
        (r, dim) orthonormal rows, r <= k, spanning the directions of A whose singular value
        exceeds ``floor``; A's device and dtype.

    Cost: as :func:`tall_svd`.
    """
    Q, S, _ = tall_svd(A)
    return Q[:int((S > floor).sum())]


def gram(A: Tensor, chunk: int = 2**20) -> Tensor:
    """The Gram matrix ``A @ A.T``, accumulated in float64.

    Args:
        A: (k, dim) rows.
        chunk: columns converted to float64 at a time.

    Returns:
        (k, k) float64 tensor on the CPU.

    Cost: k² dim multiply-adds on A's device; memory: a float64 copy of k x chunk elements.
    """
    out = torch.zeros(len(A), len(A), dtype=torch.float64, device=A.device)
    for part in A.split(chunk, dim=1):
        part = part.double()
        out += part @ part.T
    return out.cpu()
