"""The operator interface: estimators on dense matrices against numpy/scipy float64 references, and the
Hessian operator against a dense Hessian of a tiny model. No Ray; a few seconds."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import scipy.linalg
import torch

from raystudy.geometry import (DenseOperator, HessianOperator, LinearOperator, hessian_eigenvalues,
                               hessian_trace, lanczos_eigenvalues, slq_density, trace_estimate)
from raystudy.geometry.operator import Products
from test_hessian_cases import mlp, mlp_case  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

DIM = 60


def symmetric(eigenvalues: np.ndarray, seed: int = 0) -> np.ndarray:
    """U diag(eigenvalues) Uᵀ with a random orthogonal U (its own generator, not numpy's global one)."""
    U, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(eigenvalues),) * 2))
    A = U @ np.diag(eigenvalues) @ U.T
    return (A + A.T) / 2


@pytest.fixture(scope="module")
def A() -> np.ndarray:
    """A spread spectrum with separated ends, both signs: 60 x 60, float64."""
    ev = np.concatenate([[-7.0, -5.5], np.linspace(-2.0, 3.0, DIM - 4), [8.0, 10.0]])
    return symmetric(ev)


def test_dense_operator_products(A):
    op = DenseOperator(A)
    v, V = torch.ones(DIM, dtype=torch.float64), torch.eye(DIM, dtype=torch.float64)[:, :3]
    assert isinstance(op, LinearOperator) and op.shape == (DIM, DIM)
    assert op.dtype == torch.float64 and op.device == torch.device("cpu")
    assert np.allclose(op.matvec(v).numpy(), A.sum(1)) and np.allclose((op @ V).numpy(), A[:, :3])
    assert np.allclose(op.matmat(V).numpy(), A[:, :3]) and op.n_hvp == 1 + 3 + 3
    with pytest.raises(ValueError, match="square"):
        DenseOperator(np.ones((3, 4)))
    with pytest.raises(ValueError, match="shape"):
        op @ torch.ones(DIM + 1, dtype=torch.float64)


@pytest.mark.parametrize("which,k", [("largest", 2), ("smallest", 2), ("both", 2)])
def test_lanczos_on_dense_matches_eigvalsh(A, which, k):
    ref = scipy.linalg.eigvalsh(A)
    want = {"largest": ref[-k:], "smallest": ref[:k], "both": np.r_[ref[:k], ref[-k:]]}[which]
    op = DenseOperator(A)
    r = lanczos_eigenvalues(op, k=k, which=which, tol=1e-10)
    assert r.converged.all() and r.backend == "dense" and r.n_hvp == op.n_hvp
    assert np.allclose(r.eigenvalues.numpy(), want, rtol=1e-9, atol=1e-9)


def test_plain_matrices_are_operators(A):
    """A square torch matrix conforms as it is; a numpy one becomes a DenseOperator; so does a
    float32 matrix (estimates then to float32 accuracy)."""
    ref = np.linalg.eigvalsh(A)
    t = torch.from_numpy(A)
    assert isinstance(t, LinearOperator)
    assert math.isclose(lanczos_eigenvalues(t).lambda_max, ref[-1], rel_tol=1e-6)
    assert math.isclose(hessian_eigenvalues(A).lambda_max, ref[-1], rel_tol=1e-6)
    assert math.isclose(lanczos_eigenvalues(t.float(), which="smallest").lambda_min, ref[0], rel_tol=1e-4)
    with pytest.raises(ValueError, match="square"):
        lanczos_eigenvalues(torch.ones(3, 4))
    with pytest.raises(ValueError, match="linear operator"):
        trace_estimate([[1.0]])
    with pytest.raises(ValueError, match="prebuilt"):
        hessian_trace(A, backend="rev-rev")


def test_trace_exact_cases_and_stderr(A):
    """Rademacher probes of a diagonal matrix have zero variance, a full sketch spans everything:
    both give the exact trace; otherwise the estimate lies within 4 standard errors."""
    d = np.linspace(-1.0, 4.0, DIM)
    diag = trace_estimate(DenseOperator(np.diag(d)), n_hvp=20, method="hutchinson")
    assert math.isclose(diag.estimate, d.sum(), abs_tol=1e-10) and diag.stderr < 1e-12
    full = trace_estimate(DenseOperator(A), n_hvp=2 * DIM + 2, sketch=DIM)  # 2 spare: the cap
    assert math.isclose(full.estimate, np.trace(A), abs_tol=1e-9)
    assert full.sketch_rank == DIM and full.stderr == 0
    for method in ("hutchinson", "hutch++"):
        op = DenseOperator(A)
        r = trace_estimate(op, n_hvp=40, method=method, seed=3)
        assert r.n_hvp == op.n_hvp == 40 and 0 < r.stderr
        assert abs(r.estimate - np.trace(A)) <= 4 * r.stderr


def test_density_moments_and_nodes_exact_on_diagonal():
    """On a diagonal matrix every Rademacher start vector v/sqrt(n) gives vᵀAv = tr(A)/n and vᵀA²v =
    tr(A²)/n, and a full Lanczos run has the eigenvalues as nodes with weights 1/n: the density is
    the Gaussian mixture of the eigenvalues, computed here in numpy."""
    ev = np.linspace(-2.0, 5.0, 25)
    r = slq_density(DenseOperator(np.diag(ev)), n_runs=3, n_steps=25, sigma=0.3)
    assert np.allclose(r.moments, (ev.mean(), (ev**2).mean()), atol=1e-10)
    assert math.isclose(r.trace, ev.sum(), abs_tol=1e-9) and r.n_hvp <= 3 * 25
    assert all(np.allclose(np.sort(n.numpy()), ev, atol=1e-8) for n in r.nodes)
    g = r.grid.numpy()
    ref = np.exp(-0.5 * ((g[:, None] - ev) / 0.3) ** 2).sum(1) / (len(ev) * 0.3 * math.sqrt(2 * math.pi))
    assert np.allclose(r.density.numpy(), ref, atol=1e-8)
    assert math.isclose(r.lambda_max, ev[-1], abs_tol=1e-8)
    assert math.isclose(r.lambda_min, ev[0], abs_tol=1e-8)


def test_density_moments_within_stderr(A):
    r = slq_density(DenseOperator(A), n_runs=20, n_steps=30, seed=1)
    exact = (np.trace(A) / DIM, np.trace(A @ A) / DIM)
    assert all(abs(m - e) <= 4 * s for m, e, s in zip(r.moments, exact, r.moments_stderr))
    assert math.isclose(r.lambda_max, 10.0, rel_tol=1e-6) and math.isclose(r.lambda_min, -7.0, rel_tol=1e-6)


def test_hessian_operator_conforms_and_matches_dense(mlp):
    """The Hessian of a tiny model as an operator: same shape, dtype, device and products as its
    dense Hessian, and every estimator gives the same numbers on either (same seed, same probes)."""
    op = HessianOperator(mlp.model, mlp.loss_fn, mlp.batches)
    H, n = mlp.H, mlp.H.shape[0]
    assert isinstance(op, LinearOperator) and op.shape == tuple(H.shape)
    assert op.dtype == H.dtype and op.device == H.device
    V = torch.randn(n, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.allclose(op @ V[:, 0], H @ V[:, 0], atol=1e-10)
    assert torch.allclose(op @ V, H @ V, atol=1e-10) and torch.allclose(op.matmat(V), H @ V, atol=1e-10)
    assert torch.allclose(Products(op).apply(V.T), (H @ V).T, atol=1e-10)
    dense, spent, before = DenseOperator(H), 0, op.n_hvp
    for run, value in ((lambda o: trace_estimate(o, n_hvp=24, seed=5), lambda r: r.estimate),
                       (lambda o: slq_density(o, n_runs=2, n_steps=10, seed=5), lambda r: r.moments),
                       (lambda o: lanczos_eigenvalues(o, k=2, which="both", max_hvp=12, seed=5),
                        lambda r: r.eigenvalues)):
        on_h, on_dense = run(op), run(dense)
        assert np.allclose(value(on_h), value(on_dense), rtol=1e-8, atol=1e-10)
        assert on_h.n_hvp == on_dense.n_hvp and on_h.backend == "rev-rev"
        spent += on_h.n_hvp
    assert op.n_hvp - before == spent == dense.n_hvp  # a shared operator's count adds up


def test_seeds_and_global_rng(A):
    """Same seed, same numbers; another seed, other numbers; the global RNGs (torch, numpy,
    Python) are never drawn from."""
    torch.manual_seed(123)
    states = torch.random.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    runs = lambda seed: (trace_estimate(DenseOperator(A), n_hvp=20, seed=seed).estimate,
                         float(slq_density(DenseOperator(A), n_runs=2, n_steps=8, seed=seed).density.sum()),
                         lanczos_eigenvalues(DenseOperator(A), max_hvp=6, seed=seed).lambda_max)
    first, again, other = runs(0), runs(0), runs(1)
    assert first == again and all(a != b for a, b in zip(first, other))
    assert torch.equal(states[0], torch.random.get_rng_state())
    assert np.array_equal(states[1], np.random.get_state()[1]) and states[2] == random.getstate()
