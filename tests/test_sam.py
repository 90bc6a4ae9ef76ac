"""SAM: one step against a hand computation, BatchNorm stats, Adam as base, zero gradient."""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call

from raystudy.train.sam import SAM, bn_stats_frozen


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, generator=g), torch.randn(8, 2, generator=g)


def loss_at(model: nn.Module, params: dict, x, y) -> torch.Tensor:
    return nn.functional.mse_loss(functional_call(model, params, (x,)), y)


def sam_gradient_by_hand(model: nn.Module, x, y, rho: float):
    """Return (w, loss(w), g(w + e)) with e = rho g / ||g||, via autograd on a separate copy."""
    ref = copy.deepcopy(model)
    w = {k: v.detach().clone().requires_grad_(True) for k, v in ref.named_parameters()}
    loss = loss_at(ref, w, x, y)
    g = torch.autograd.grad(loss, list(w.values()))
    norm = torch.sqrt(sum((gi**2).sum() for gi in g))
    w_adv = {k: (v + rho * gi / norm).detach().requires_grad_(True) for (k, v), gi in zip(w.items(), g)}
    g_adv = torch.autograd.grad(loss_at(ref, w_adv, x, y), list(w_adv.values()))
    return {k: v.detach() for k, v in w.items()}, loss.detach(), dict(zip(w, g_adv))


def test_one_sgd_step_matches_hand_computation():
    with torch.random.fork_rng():
        model = tiny_mlp()
    x, y = data()
    lr, rho = 0.1, 0.3
    w, loss_w, g_adv = sam_gradient_by_hand(model, x, y, rho)
    sam = SAM(model, torch.optim.SGD(model.parameters(), lr=lr), rho=rho)
    returned = sam.step(lambda: nn.functional.mse_loss(model(x), y))
    assert torch.allclose(returned, loss_w)
    for k, p in model.named_parameters():
        assert torch.allclose(p, w[k] - lr * g_adv[k], atol=1e-6), k
    # The update uses g(w+e), not g(w): they differ enough here to tell apart.
    assert any(not torch.allclose(g_adv[k], torch.zeros_like(g_adv[k])) for k in g_adv)


def test_weights_restored_exactly_before_base_step():
    with torch.random.fork_rng():
        model = tiny_mlp()
    x, y = data()
    before = [p.detach().clone() for p in model.parameters()]
    SAM(model, torch.optim.SGD(model.parameters(), lr=0.0), rho=0.5).step(
        lambda: nn.functional.mse_loss(model(x), y))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_adam_base_matches_adam_fed_the_perturbed_gradient():
    with torch.random.fork_rng():
        model = tiny_mlp()
    x, y = data()
    twin = copy.deepcopy(model)
    _, _, g_adv = sam_gradient_by_hand(model, x, y, rho=0.05)
    sam = SAM(model, torch.optim.Adam(model.parameters(), lr=0.01), rho=0.05)
    sam.step(lambda: nn.functional.mse_loss(model(x), y))
    ref_opt = torch.optim.Adam(twin.parameters(), lr=0.01)
    for k, p in twin.named_parameters():
        p.grad = g_adv[k].clone()
    ref_opt.step()
    for (k, p), q in zip(model.named_parameters(), twin.parameters()):
        assert torch.allclose(p, q, atol=1e-7), k
    assert sam.state_dict()["state"][0]["step"] == 1
    assert sam.state_dict() == sam.base_optimizer.state_dict()


def test_bn_running_stats_only_updated_by_first_pass():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                              nn.Linear(3 * 4 * 4, 2), nn.BatchNorm1d(2, momentum=None))
        x = torch.randn(6, 1, 6, 6)
        y = torch.randint(0, 2, (6,))
    plain = copy.deepcopy(model).train()
    with torch.no_grad():
        plain(x)  # ONE forward in train mode
    model.train()
    SAM(model, torch.optim.SGD(model.parameters(), lr=0.5), rho=0.5).step(
        lambda: nn.functional.cross_entropy(model(x), y))
    for name, buf in plain.named_buffers():
        assert torch.equal(dict(model.named_buffers())[name], buf), name
    assert int(model[1].num_batches_tracked) == 1


def test_bn_stats_frozen_restores_after_forward():
    bn = nn.BatchNorm1d(4).train()
    with bn_stats_frozen(bn):
        bn(torch.randn(5, 4) + 3.0)
    assert torch.equal(bn.running_mean, torch.zeros(4)) and int(bn.num_batches_tracked) == 0


def test_zero_gradient_does_not_divide_by_zero():
    with torch.random.fork_rng():
        model = tiny_mlp()
    x, _ = data()
    before = [p.detach().clone() for p in model.parameters()]
    loss = SAM(model, torch.optim.SGD(model.parameters(), lr=0.1), rho=0.05).step(
        lambda: 0.0 * model(x).sum())
    assert torch.isfinite(loss)
    for a, p in zip(before, model.parameters()):
        assert torch.isfinite(p).all() and torch.equal(a, p)
