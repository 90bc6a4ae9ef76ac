"""Hessian-vector products and Lanczos eigenvalues against dense float64 Hessians and closed forms."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from raystudy.geometry.hvp import HessianOperator
from raystudy.geometry.lanczos import hessian_eigenvalues, lanczos_eigenvalues
from test_hessian_cases import (cnn, mlp,  # noqa: F401  (fixtures)
                                SPECTRUM, assert_untouched, cnn_case, dense_hessian, mlp_case,
                                quadratic_case, snapshot)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def quad():
    return quadratic_case()


@pytest.mark.parametrize("backend", ["rev-rev", "fwd-rev"])
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_products_match_dense(request, name, backend):
    case = request.getfixturevalue(name)
    for cache in (False, True):
        op = HessianOperator(case.model, case.loss_fn, case.batches, backend=backend,
                             cache_graph=cache, max_block=3)
        V = torch.randn(op.dim, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        assert torch.allclose(op.matmat(V), case.H @ V, rtol=0, atol=1e-12)
        assert torch.allclose(op.matvec(V[:, 0]), case.H @ V[:, 0], rtol=0, atol=1e-12)
        assert op.n_hvp == 8 and op.backend == backend


def test_graph_cache_rule(cnn):
    """Graphs are kept when they fit the memory budget (measured), always for a single batch."""
    v = torch.randn(cnn.H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    roomy = HessianOperator(cnn.model, cnn.loss_fn, cnn.batches)
    tight = HessianOperator(cnn.model, cnn.loss_fn, cnn.batches, graph_memory_bytes=1)
    whole = [tuple(torch.cat(t) for t in zip(*cnn.batches))]
    single = HessianOperator(cnn.model, cnn.loss_fn, whole, graph_memory_bytes=1)
    for op in (roomy, tight, single):
        for _ in range(2):  # the second product reuses the cached graphs
            assert torch.allclose(op.matvec(v), cnn.H @ v, atol=1e-12)
    assert (roomy.cache_graph, tight.cache_graph, single.cache_graph) == (True, False, True)


def test_parameter_subsets(cnn):
    op = HessianOperator(cnn.model, cnn.loss_fn, cnn.batches, params="no_bn")
    assert op.dim == cnn.H.shape[0] - 6  # BatchNorm weight and bias, 3 channels each
    op = HessianOperator(cnn.model, cnn.loss_fn, cnn.batches, params=["4.weight"])
    X, Y = (torch.cat(t) for t in zip(*cnn.batches))
    block = dense_hessian(cnn.model, cnn.loss_fn, X, Y, names=["4.weight"])
    assert torch.allclose(op.matmat(torch.eye(op.dim, dtype=torch.float64)), block, atol=1e-12)


def test_float64_on_request_leaves_model_float32(mlp):
    model32 = mlp_case().model.float()
    before = snapshot(model32)
    op = HessianOperator(model32, mlp.loss_fn, [(x.float(), y) for x, y in mlp.batches],
                         dtype=torch.float64)
    assert op.dtype == torch.float64 and next(model32.parameters()).dtype == torch.float32
    v = torch.randn(op.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(op.matvec(v), mlp.H @ v, atol=1e-5)  # weights were rounded to float32
    assert_untouched(model32, before)


def test_fallback_when_forward_ad_is_missing(mlp):
    class Square(torch.autograd.Function):  # no setup_context/jvp: torch.func cannot run it
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return 2 * x * grad  # differentiable, so double backward works

    model = nn.Sequential(nn.Linear(5, 3)).double()
    loss_fn = lambda out, y: Square.apply(out).mean()
    op = HessianOperator(model, loss_fn, mlp.batches, backend="fwd-rev")
    X = torch.cat([x for x, _ in mlp.batches])
    H = dense_hessian(model, lambda out, y: (out**2).mean(), X, None)
    v = torch.randn(op.dim, dtype=torch.float64)
    assert torch.allclose(op.matvec(v), H @ v, atol=1e-12) and op.backend == "rev-rev"
    times = HessianOperator(mlp.model, mlp.loss_fn, mlp.batches).time_backends(k=2)
    assert set(times) == {"rev-rev", "fwd-rev"} and all(0 < t < math.inf for t in times.values())


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_top5_and_bottom2_match_dense(request, name):
    case = request.getfixturevalue(name)
    before = snapshot(case.model)
    top = hessian_eigenvalues(case.model, case.loss_fn, case.batches, k=5, tol=1e-6,
                              eigenvectors=True)
    bottom = hessian_eigenvalues(case.model, case.loss_fn, case.batches, k=2, which="smallest",
                                 tol=1e-6)
    assert_untouched(case.model, before)
    ev = case.eigenvalues
    assert torch.allclose(top.eigenvalues, ev[-5:], rtol=1e-4, atol=0)
    assert torch.allclose(bottom.eigenvalues, ev[:2], rtol=1e-4, atol=0)
    assert bottom.lambda_min < 0 < top.lambda_max
    assert top.converged.all() and bottom.converged.all()
    Y = top.eigenvectors  # the reported residuals are the true ones
    true_res = (case.H @ Y - Y * top.eigenvalues).norm(dim=0)
    assert torch.allclose(top.residuals, true_res, atol=1e-9)
    assert top.n_hvp < case.H.shape[0] and top.wall_s > 0


def test_both_ends_with_thick_restarts(mlp):
    op = HessianOperator(mlp.model, mlp.loss_fn, mlp.batches)
    out = lanczos_eigenvalues(op, k=3, which="both", tol=1e-8, max_basis=12)
    assert out.n_hvp > 12  # the basis was compressed at least once
    ev = mlp.eigenvalues
    assert torch.allclose(out.eigenvalues, torch.cat([ev[:3], ev[-3:]]), rtol=1e-6, atol=0)
    assert out.converged.all()


def test_quadratic_known_spectrum(quad):
    top = hessian_eigenvalues(quad.model, quad.loss_fn, quad.batches, k=3, block_size=2, tol=1e-10)
    assert torch.allclose(top.eigenvalues, torch.tensor([4.0, 6.0, 6.0], dtype=torch.float64),
                          atol=1e-9)
    low = hessian_eigenvalues(quad.model, quad.loss_fn, quad.batches, k=3, which="smallest",
                              block_size=2, tol=1e-10)
    assert torch.allclose(low.eigenvalues, torch.tensor([-5.0, -3.0, -3.0], dtype=torch.float64),
                          atol=1e-9)
    every = hessian_eigenvalues(quad.model, quad.loss_fn, quad.batches, k=6, which="both",
                                block_size=3, tol=1e-10)  # 12 of 12: the basis spans everything
    assert torch.allclose(every.eigenvalues, SPECTRUM.sort().values, atol=1e-9)


def test_budget_is_respected(mlp):
    out = hessian_eigenvalues(mlp.model, mlp.loss_fn, mlp.batches, k=5, tol=1e-14, max_hvp=9)
    assert out.n_hvp <= 9 and not out.converged.all()


def test_deterministic_and_seeded(mlp):
    run = lambda seed: hessian_eigenvalues(mlp.model, mlp.loss_fn, mlp.batches, k=2, tol=1e-3,
                                           seed=seed, eigenvectors=True)
    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a.eigenvalues, b.eigenvalues) and torch.equal(a.eigenvectors, b.eigenvectors)
    assert not torch.equal(a.eigenvalues, c.eigenvalues)  # another start vector, other rounding


def test_model_modes_restored(cnn):
    cnn.model.train()
    cnn.model[1].eval()  # mixed modes must survive, not just the top-level flag
    before = snapshot(cnn.model)
    out = hessian_eigenvalues(cnn.model, cnn.loss_fn, cnn.batches, k=1, tol=1e-8)
    assert_untouched(cnn.model, before)
    assert math.isclose(out.lambda_max, float(cnn.eigenvalues[-1]), rel_tol=1e-6)  # BN in eval
    cnn.model.eval()


def test_bad_input(mlp):
    m, f, data = mlp.model, mlp.loss_fn, mlp.batches
    with pytest.raises(ValueError, match="empty"):
        hessian_eigenvalues(m, f, [])
    frozen = nn.Linear(5, 3).double().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        hessian_eigenvalues(frozen, f, data)
    with pytest.raises(ValueError, match="dimension"):
        hessian_eigenvalues(m, f, data, k=mlp.H.shape[0] + 1)
    with pytest.raises(ValueError, match="nan"):
        hessian_eigenvalues(m, f, [(torch.full_like(data[0][0], math.nan), data[0][1])])
    with pytest.raises(ValueError, match="which"):
        hessian_eigenvalues(m, f, data, which="middle")
    with pytest.raises(ValueError, match="backend"):
        hessian_eigenvalues(m, f, data, backend="finite-differences")
    with pytest.raises(ValueError, match="no parameter named"):
        hessian_eigenvalues(m, f, data, params=["nope"])


def test_no_tall_svd_or_eigensolver(monkeypatch):
    """cuSOLVER's SVD of a tall (dim x block) matrix fails for network-sized dim: every SVD and
    eigensolver call of every estimator must get a small matrix (QR of tall matrices is fine), also
    on the rank-deficient block paths (a low-rank Hessian with a repeated eigenvalue)."""
    from raystudy.geometry.density import slq_density
    from raystudy.geometry.trace import trace_estimate
    from test_hessian_cases import low_rank_case

    case = low_rank_case(1500, [5.0, 5.0, 3.0, 1.0, -2.0, -2.0])  # its dense eigvalsh: not recorded
    shapes = []
    for name in ("svd", "svdvals", "eigh", "eigvalsh", "eig", "eigvals"):
        def recorder(A, *args, _f=getattr(torch.linalg, name), **kwargs):
            shapes.append(tuple(A.shape))
            return _f(A, *args, **kwargs)
        monkeypatch.setattr(torch.linalg, name, recorder)
    op = HessianOperator(case.model, case.loss_fn, case.batches)
    top = lanczos_eigenvalues(op, k=3, block_size=4, tol=1e-10)
    ends = lanczos_eigenvalues(op, k=2, which="both", block_size=3, tol=1e-10, max_basis=12)
    assert torch.allclose(top.eigenvalues, torch.tensor([3.0, 5.0, 5.0], dtype=torch.float64),
                          atol=1e-9) and top.converged.all()
    assert torch.allclose(ends.eigenvalues, torch.tensor([-2.0, -2.0, 5.0, 5.0], dtype=torch.float64),
                          atol=1e-9) and ends.converged.all()
    tr = trace_estimate(op, n_hvp=30)  # the sketch of a rank-6 H spans its range: exact
    assert math.isclose(tr.estimate, 10.0, abs_tol=1e-9) and tr.sketch_rank == 6
    assert math.isclose(trace_estimate(op, n_hvp=30, sketch=8).estimate, 10.0, abs_tol=1e-9)
    slq_density(op, n_runs=2, n_steps=10)
    assert shapes and max(max(s[-2:]) for s in shapes) <= 1000, shapes
