"""Small models with dense float64 Hessians, shared by the Hessian tests (no tests in this file).

The reference never goes through raystudy: ``torch.autograd.functional.hessian`` of the loss of the
whole data set in ONE forward pass. The estimators see the same data split into batches of unequal
size, so a wrong batch weighting shows up as a wrong spectrum.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

SIZES = (10, 8, 5)


pytestmark = pytest.mark.usefixtures("one_thread")


  # unequal batches: an unweighted batch average would be biased


@dataclass
class Case:
    model: nn.Module
    loss_fn: nn.Module
    batches: list[tuple[Tensor, Tensor]]
    H: Tensor  # dense Hessian (dim x dim), float64
    eigenvalues: Tensor  # ascending


def dense_hessian(model: nn.Module, loss_fn, X: Tensor, Y: Tensor, names=None) -> Tensor:
    params = {n: p.detach() for n, p in model.named_parameters() if names is None or n in names}
    shapes = [p.shape for p in params.values()]

    def loss(flat: Tensor) -> Tensor:
        parts = dict(zip(params, (c.view(s) for c, s in zip(flat.split([s.numel() for s in shapes]), shapes))))
        return loss_fn(torch.func.functional_call(model, parts, (X,)), Y)

    was = model.training
    model.eval()
    H = torch.autograd.functional.hessian(loss, torch.cat([p.reshape(-1) for p in params.values()]))
    model.train(was)
    return H


def _case(model: nn.Module, X: Tensor, Y: Tensor) -> Case:
    loss_fn = nn.CrossEntropyLoss()
    batches = list(zip(X.split(list(SIZES)), Y.split(list(SIZES))))
    H = dense_hessian(model, loss_fn, X, Y)
    return Case(model, loss_fn, batches, H, torch.linalg.eigvalsh(H))


def mlp_case() -> Case:
    g = torch.Generator().manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    X = torch.randn(sum(SIZES), 5, generator=g, dtype=torch.float64)
    Y = torch.randint(0, 3, (sum(SIZES),), generator=g)
    return _case(model, X, Y)


def cnn_case() -> Case:
    """Conv -> BatchNorm (eval: non-trivial running statistics) -> ReLU -> Linear, 183 parameters."""
    g = torch.Generator().manual_seed(2)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(48, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.7)
        bn = model[1]
        bn.running_mean.copy_(torch.randn(3, generator=g, dtype=torch.float64) * 0.3)
        bn.running_var.copy_(torch.rand(3, generator=g, dtype=torch.float64) + 0.5)
    X = torch.randn(sum(SIZES), 1, 6, 6, generator=g, dtype=torch.float64)
    Y = torch.randint(0, 3, (sum(SIZES),), generator=g)
    return _case(model, X, Y)


class Quadratic(nn.Module):
    """Loss 0.5 θᵀAθ for every sample: the Hessian is A, whatever the data."""

    def __init__(self, A: Tensor):
        super().__init__()
        self.register_buffer("A", A)
        self.theta = nn.Parameter(torch.ones(len(A), dtype=A.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return (0.5 * self.theta @ self.A @ self.theta).expand(len(x))


SPECTRUM = torch.tensor([6.0, 6.0, 4.0, 2.0, 1.0, 1.0, 0.0, 0.0, -1.0, -3.0, -3.0, -5.0],
                        dtype=torch.float64)


def quadratic_case() -> Case:
    """A = U diag(SPECTRUM) Uᵀ with a random orthogonal U: repeated and negative eigenvalues."""
    g = torch.Generator().manual_seed(3)
    U = torch.linalg.qr(torch.randn(len(SPECTRUM), len(SPECTRUM), generator=g, dtype=torch.float64)).Q
    A = U @ torch.diag(SPECTRUM) @ U.T
    A = (A + A.T) / 2
    batches = [(torch.zeros(n, 1, dtype=torch.float64), torch.zeros(n)) for n in SIZES]
    return Case(Quadratic(A), lambda out, y: out.mean(), batches, A, SPECTRUM.sort().values)


def matrix_case(A: Tensor) -> Case:
    """The Quadratic model of a given symmetric A (float64), one batch (one backward per Hv):
    H = A exactly."""
    batches = [(torch.zeros(1, 1, dtype=A.dtype), torch.zeros(1))]
    return Case(Quadratic(A), lambda out, y: out.mean(), batches, A, torch.linalg.eigvalsh(A))


def low_rank_case(dim: int, spectrum: list[float], seed: int = 4) -> Case:
    """A = U diag(spectrum) Uᵀ with U (dim x len(spectrum)) orthonormal: rank len(spectrum), the
    rest of the spectrum 0. Krylov blocks of it turn rank-deficient after a few steps."""
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(dim, len(spectrum), generator=g, dtype=torch.float64)).Q
    A = U @ torch.diag(torch.tensor(spectrum, dtype=torch.float64)) @ U.T
    return matrix_case((A + A.T) / 2)


def snapshot(model: nn.Module) -> dict:
    """Everything an estimator must leave as it found it."""
    return {"state": {k: v.clone() for k, v in model.state_dict().items()},
            "modes": [m.training for m in model.modules()],
            "grads": [p.grad for p in model.parameters()],
            "rng": torch.random.get_rng_state()}


def assert_untouched(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert before["state"].keys() == after["state"].keys()
    assert all(torch.equal(before["state"][k], after["state"][k]) for k in before["state"])
    assert before["modes"] == after["modes"]
    assert all(g is None for g in after["grads"])
    assert torch.equal(before["rng"], after["rng"])


@pytest.fixture(scope="module")
def mlp():
    return mlp_case()


@pytest.fixture(scope="module")
def cnn():
    return cnn_case()
