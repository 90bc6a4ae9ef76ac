"""What the curvature estimators multiply by: any square linear operator, as in curvlinops.

An operator is anything with ``shape`` (n, n), ``dtype``, ``device`` and ``A @ x`` for a vector x of
shape (n,) -> (n,) and a block of columns X of shape (n, k) -> (n, k): the loss Hessian
(``HessianOperator``), a ``DenseOperator``, or a plain square torch matrix. The estimators
(``lanczos_eigenvalues``, ``trace_estimate``, ``slq_density``) see it through ``Products``, which
multiplies blocks of probes and counts every product, so each result says what it cost whatever the
operator. Only symmetric operators have the real spectra the estimators assume; none is checked
(that would cost n products).
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

DEFAULT_BLOCK = 16  # probes per product when the operator does not say (HessianOperator's default)


@runtime_checkable
class LinearOperator(Protocol):
    """A square linear map of R^n: ``shape`` (n, n), ``dtype`` and ``device`` of its products, and
    ``A @ x`` for x of shape (n,) or (n, k) on that device and dtype, returning the same shape.
    A torch matrix conforms as it is."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def device(self) -> torch.device: ...

    def __matmul__(self, x: Tensor) -> Tensor: ...


class DenseOperator:
    """A dense matrix as an operator, counting its products like ``HessianOperator`` does.

    Args:
        A: (n, n) floating-point torch tensor or numpy array; kept as is (a numpy array is shared,
            not copied), so it must not change while an estimator runs.
        max_block: most probes per product the estimators send at once.

    Cost: ``A @ x``, ``matvec`` and ``matmat`` take one matrix-vector product per column (n²
    multiply-adds each), counted in ``n_hvp``; memory: A itself.
    """

    backend = "dense"

    def __init__(self, A: Tensor | np.ndarray, max_block: int = DEFAULT_BLOCK):
        A = torch.from_numpy(A) if isinstance(A, np.ndarray) else A
        if A.ndim != 2 or A.shape[0] != A.shape[1] or not A.is_floating_point():
            raise ValueError(f"a dense operator needs a square floating-point matrix, got "
                             f"{tuple(A.shape)} {A.dtype}")
        self.A, self.max_block, self.n_hvp = A, max_block, 0

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.A.shape)

    @property
    def dtype(self) -> torch.dtype:
        return self.A.dtype

    @property
    def device(self) -> torch.device:
        return self.A.device

    def matvec(self, v: Tensor) -> Tensor:
        """A v.

        Args:
            v: (n,) vector (cast to A's device and dtype).

        Returns:
            (n,) tensor. Cost: 1 product (n² multiply-adds).
        """
        return self @ v

    def matmat(self, V: Tensor) -> Tensor:
        """A V.

        Args:
            V: (n, k) columns (cast to A's device and dtype).

        Returns:
            (n, k) tensor. Cost: k products (k n² multiply-adds).
        """
        return self @ V

    def __matmul__(self, x: Tensor) -> Tensor:
        """``matvec`` for x (n,), ``matmat`` for x (n, k). Cost: 1 or k products."""
        if x.ndim not in (1, 2) or x.shape[0] != self.A.shape[0]:
            raise ValueError(f"expected shape ({self.A.shape[0]},) or ({self.A.shape[0]}, k), "
                             f"got {tuple(x.shape)}")
        self.n_hvp += 1 if x.ndim == 1 else x.shape[1]
        return self.A @ x.to(self.A.device, self.A.dtype)


def as_linear_operator(A: Any) -> LinearOperator:
    """An operator the estimators accept.

    Args:
        A: a ``LinearOperator`` (``HessianOperator``, ``DenseOperator``, a square torch matrix)
            or a square numpy array.

    Returns:
        ``A`` itself if it conforms, a numpy array wrapped as a ``DenseOperator``.

    Raises:
        ValueError: not an operator (e.g. a model, a list) or not square.

    Cost: nothing (no copy).
    """
    if isinstance(A, np.ndarray):
        return DenseOperator(A)
    if isinstance(A, torch.nn.Module) or not isinstance(A, LinearOperator):
        raise ValueError(f"expected a linear operator (shape, dtype, device, @), got {type(A).__name__}")
    if len(A.shape) != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"the operator must be square, got shape {tuple(A.shape)}")
    return A


class Products:
    """The estimators' view of an operator: blocks of probes as rows, every product counted.

    Args:
        op: a ``LinearOperator`` (or a numpy matrix, see ``as_linear_operator``).

    Attributes: ``dim`` (n), ``dtype``, ``device``, ``max_block`` (the operator's, else
    DEFAULT_BLOCK), ``n_hvp`` (products spent through this view), ``backend`` (the operator's own
    name for how it multiplies, e.g. "rev-rev", read after the products since a Hessian may switch).

    Cost: the operator's own per product, plus a transpose view each way (no copy for a
    ``HessianOperator``).
    """

    def __init__(self, op: Any):
        self.op = as_linear_operator(op)
        self.dim = int(self.op.shape[0])
        self.dtype, self.device = self.op.dtype, torch.device(self.op.device)
        self.max_block = int(getattr(self.op, "max_block", DEFAULT_BLOCK))
        self.n_hvp = 0

    @property
    def backend(self) -> str:
        return str(getattr(self.op, "backend", type(self.op).__name__))

    def apply(self, X: Tensor) -> Tensor:
        """A applied to each row of X, as one block (``op @ X.T``).

        Args:
            X: (k, dim) probes as rows.

        Returns:
            (k, dim) tensor, row i = A X[i], on the operator's device and dtype.

        Raises:
            ValueError: X or the operator's result of the wrong shape.

        Cost: k products, counted in ``n_hvp``.
        """
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise ValueError(f"probes must have shape (k, {self.dim}), got {tuple(X.shape)}")
        out = self.op @ X.T  # rows -> columns and back: views for HessianOperator, no copy
        self.n_hvp += len(X)
        if out.shape != (self.dim, len(X)):
            raise ValueError(f"the operator returned shape {tuple(out.shape)} for {tuple(X.T.shape)}")
        return out.T.to(self.device, self.dtype)
