"""raystudy.geometry.tall: the SVD of a few long rows through a QR of the tall matrix, checked on rows whose
decomposition is known by hand, on a rank-deficient block, and on a random tall block (reconstruction)."""
from __future__ import annotations

import torch

from raystudy.geometry.tall import gram, orthonormal_basis, tall_svd


def test_known_singular_values_and_vectors():
    A = torch.zeros(2, 5)
    A[0, 0], A[1, 3] = 3.0, -4.0  # singular values 4 and 3, along e3 and e0
    Q, S, Zh = tall_svd(A)
    torch.testing.assert_close(S, torch.tensor([4.0, 3.0], dtype=torch.float64))
    assert Q.dtype == A.dtype and S.dtype == Zh.dtype == torch.float64
    torch.testing.assert_close(Q.abs(), torch.eye(5)[[3, 0]])
    torch.testing.assert_close(Zh.T.float() @ torch.diag(S).float() @ Q, A)


def test_rank_deficient_block_keeps_only_its_span():
    v = torch.tensor([1.0, 2.0, 2.0, 0.0], dtype=torch.float64)  # |v| = 3
    A = torch.stack([v, 2 * v, -v])  # rank 1, singular value 3 * sqrt(1 + 4 + 1)
    Q, S, _ = tall_svd(A)
    assert abs(S[0].item() - 3 * 6**0.5) < 1e-12 and S[1:].abs().max() < 1e-12
    basis = orthonormal_basis(A, floor=1e-9)
    assert basis.shape == (1, 4)
    torch.testing.assert_close(basis[0].abs(), (v / 3).abs())
    assert orthonormal_basis(A, floor=10.0).shape == (0, 4)  # 3 * sqrt(6) = 7.3 is below the floor


def test_a_tall_random_block_reconstructs_with_orthonormal_rows():
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(6, 50_000, generator=gen, dtype=torch.float64)
    Q, S, Zh = tall_svd(A)
    torch.testing.assert_close(Q @ Q.T, torch.eye(6, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(Zh.T @ torch.diag(S) @ Q, A, atol=1e-10, rtol=0)
    torch.testing.assert_close(S, torch.linalg.svdvals(A))  # the plain SVD agrees where it works
    assert (S[:-1] >= S[1:]).all()


def test_gram_in_float64_whatever_the_chunk():
    A = torch.arange(12.0).reshape(3, 4)
    want = torch.tensor([[14.0, 38.0, 62.0], [38.0, 126.0, 214.0], [62.0, 214.0, 366.0]], dtype=torch.float64)
    for chunk in (1, 3, 4, 100):
        assert torch.equal(gram(A, chunk=chunk), want), chunk
    big = torch.full((1, 3), 2.0**12, dtype=torch.float32) + torch.tensor([[0.0, 1.0, 0.0]])
    # float32 would round 3 * 2^24 + 2 * 2^12 + 1; float64 holds it exactly
    assert gram(big).item() == 3 * 2.0**24 + 2 * 2.0**12 + 1
