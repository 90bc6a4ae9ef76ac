"""PAC-Bayes magnitude-aware flatness against its closed form on a linear model, and the invariance the
magnitude-aware noise promises (a ReLU layer rescaled, the next one divided: same function, same sigma')."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from raystudy.geometry.pac_bayes import SIGMA_MAX, pac_bayes_flatness


def _linear_fit(d: int = 5, n: int = 64, seed: int = 0) -> tuple[nn.Module, list]:
    """A bias-free linear model y = X w that fits its data exactly (float64): residuals 0."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, d, generator=g, dtype=torch.float64) + 0.5)
        y = model(x)
    return model, [(x[:40], y[:40]), (x[40:], y[40:])]  # an unequal last batch


def test_linear_model_matches_closed_form():
    # Exact fit: L(w+u) - L(w) = mean_n (u . x_n)^2, so E_u = sum_i m_i (sigma^2 w_i^2 + eps^2) with
    # m_i = mean_n x_ni^2, and sigma'^2 = (bound - eps^2 sum m) / sum m_i w_i^2.
    model, batches = _linear_fit()
    x = torch.cat([b[0] for b in batches])
    m, w2 = x.square().mean(0), model.weight.detach()[0].square()
    bound, eps = 0.05, 1e-2
    closed = math.sqrt((bound - eps**2 * float(m.sum())) / float((m * w2).sum()))
    got = pac_bayes_flatness(model, nn.MSELoss(), batches, bound=bound, eps=eps, n_draws=4000, seed=3)
    assert got.sigma == pytest.approx(closed, rel=0.04)  # Monte Carlo: 4,000 draws, ~1.5% sd on sigma
    assert got.flatness == pytest.approx(1 / got.sigma**2)
    assert got.increase <= bound and not got.censored
    assert got.base_loss == pytest.approx(0.0, abs=1e-20)


def test_bisection_lands_on_the_crossing():
    # eps = 0 and an exact fit: the common-random-number estimate is exactly sigma^2 * c, so the increase
    # at the returned sigma sits just below the bound (within the bracket's relative width).
    model, batches = _linear_fit(seed=1)
    got = pac_bayes_flatness(model, nn.MSELoss(), batches, bound=0.2, eps=0.0, n_draws=16, rtol=1e-4)
    assert got.increase <= 0.2
    assert got.increase >= 0.2 * (1 - 1e-4) ** 2 - 1e-12
    assert got.n_forward > 16


def _relu_net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)  # building weights only; the estimator itself never touches the global RNG
    return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2)).double()


def test_invariant_to_relu_rescaling():
    net = _relu_net(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 3, generator=g, dtype=torch.float64)
    batches = [(x, torch.randint(0, 2, (50,), generator=g))]
    scaled = _relu_net(0)
    with torch.no_grad():  # layer 1 (weights and bias) x 7, layer 2's weights / 7: the same function
        scaled[0].weight.mul_(7.0), scaled[0].bias.mul_(7.0), scaled[2].weight.div_(7.0)
    assert torch.allclose(net(x), scaled(x))
    kw = dict(bound=0.05, eps=0.0, n_draws=64, seed=5, rtol=1e-5)
    a = pac_bayes_flatness(net, nn.CrossEntropyLoss(), batches, **kw)
    b = pac_bayes_flatness(scaled, nn.CrossEntropyLoss(), batches, **kw)
    assert b.sigma == pytest.approx(a.sigma, rel=1e-4)
    assert 0 < a.sigma < SIGMA_MAX


def test_seeded_and_global_rng_untouched():
    model, batches = _linear_fit(seed=2)
    state = torch.get_rng_state()
    a = pac_bayes_flatness(model, nn.MSELoss(), batches, bound=0.05, n_draws=8, seed=11)
    b = pac_bayes_flatness(model, nn.MSELoss(), batches, bound=0.05, n_draws=8, seed=11)
    c = pac_bayes_flatness(model, nn.MSELoss(), batches, bound=0.05, n_draws=8, seed=12)
    assert torch.equal(state, torch.get_rng_state())
    assert a == b and a.sigma != c.sigma


def test_eps_floor_and_censoring():
    model, batches = _linear_fit(seed=4)
    floor = pac_bayes_flatness(model, nn.MSELoss(), batches, bound=1e-3, eps=10.0, n_draws=8)
    assert floor.sigma == 0 and floor.flatness == math.inf and floor.increase > 1e-3
    loose = pac_bayes_flatness(model, nn.MSELoss(), batches, bound=1e9, n_draws=8)
    assert loose.censored and loose.sigma == SIGMA_MAX


def test_zero_one_error_as_the_bounded_loss():
    # Jiang et al. bound the training *error*: a 0-1 loss works (no gradients are taken).
    net = _relu_net(3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, generator=g, dtype=torch.float64)
    y = net(x).argmax(1)  # the net classifies its own labels perfectly: error 0 at w
    error = lambda out, t: (out.argmax(1) != t).double().mean()
    got = pac_bayes_flatness(net, error, [(x, y)], bound=0.1, n_draws=32)
    assert got.base_loss == 0.0 and 0 < got.sigma < SIGMA_MAX and got.increase <= 0.1


def test_bad_arguments_refused():
    model, batches = _linear_fit()
    for kw in (dict(bound=0), dict(bound=math.nan), dict(eps=-1), dict(n_draws=0), dict(rtol=1)):
        with pytest.raises(ValueError):
            pac_bayes_flatness(model, nn.MSELoss(), batches, **kw)
