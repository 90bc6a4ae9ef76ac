"""Fisher–Rao norm, relative flatness and SAM-sharpness against independent references."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from raystudy.geometry.fisher_rao import count_weight_layers, fisher_rao_norm
from raystudy.geometry.flatness import relative_flatness, relative_flatness_result
from raystudy.geometry.sharpness import sam_sharpness, sam_sharpness_sweep

CE = nn.CrossEntropyLoss()
MSE = nn.MSELoss()


def _classification(n=13, d_in=3, n_classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    y = torch.randint(0, n_classes, (n,), generator=g)
    return x, y


def _split(x, y, sizes):
    out, start = [], 0
    for s in sizes:
        out.append((x[start : start + s], y[start : start + s]))
        start += s
    return out


def _mlp(*widths, bias=True, seed=0, dropout=False):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b, bias=bias))
        if i < len(widths) - 2:
            layers += [nn.ReLU()] + ([nn.Dropout(0.5)] if dropout else [])
    return nn.Sequential(*layers).double()


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model, before):
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


# ---------------------------------------------------------------- Fisher–Rao


def test_count_weight_layers():
    model = nn.Sequential(
        nn.Embedding(10, 4), nn.Conv1d(4, 4, 3), nn.BatchNorm1d(4), nn.Conv2d(1, 1, 1),
        nn.Conv3d(1, 1, 1), nn.Flatten(), nn.Linear(4, 2), nn.ReLU(), nn.LayerNorm(2),
    )
    assert count_weight_layers(model) == 5


def test_fisher_rao_matches_numpy_loop_in_eval_mode():
    x, y = _classification()
    model = _mlp(3, 6, 5, 4, dropout=True)  # dropout: only eval mode gives deterministic logits
    model.train()
    fr = fisher_rao_norm(model, _split(x, y, [5, 5, 3]))
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        logits = model(x).numpy()
    terms = []
    for f, label in zip(logits, y.numpy()):
        p = np.exp(f - f.max()) / np.exp(f - f.max()).sum()
        terms.append((p @ f - f[label]) ** 2)
    n_layers = 3
    assert fr == pytest.approx(math.sqrt((n_layers + 1) ** 2 * np.mean(terms)), rel=1e-12)


def test_fisher_rao_matches_euler_autograd_for_bias_free_relu_net():
    # Bias-free ReLU net with L Linear layers: logits are L-homogeneous in theta, so
    # <theta, grad loss_i> = L * (<p_i, f_i> - f_i[y_i]) and FR = (L+1)/L * rms_i <theta, grad loss_i>.
    x, y = _classification(n=11)
    model = _mlp(3, 7, 6, 4, bias=False, seed=1)
    n_layers = 3
    dots = []
    for i in range(len(x)):
        loss = CE(model(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, list(model.parameters()))
        dots.append(sum((p * g).sum() for p, g in zip(model.parameters(), grads)).item())
    expected = (n_layers + 1) / n_layers * math.sqrt(np.mean(np.square(dots)))
    assert fisher_rao_norm(model, _split(x, y, [4, 7])) == pytest.approx(expected, rel=1e-10)


def test_fisher_rao_unequal_batches_equal_one_batch():
    x, y = _classification(n=17)
    model = _mlp(3, 5, 4)
    one = fisher_rao_norm(model, [(x, y)])
    assert fisher_rao_norm(model, _split(x, y, [8, 8, 1])) == pytest.approx(one, rel=1e-12)
    assert fisher_rao_norm(model, _split(x, y, [1, 16])) == pytest.approx(one, rel=1e-12)


# ---------------------------------------------------------------- relative flatness


def _dense_kappa(model, loss_fn, x, y, normalise=True, exclude_constant=True):
    """kappa from the dense Hessian of the loss in the (normalised) classifier weight, block by block.
    Constant features (std <= 1e-9 rms; these float64 tests have exact ones) are part of the bias:
    their columns enter the logits as a fixed offset, not the Hessian. exclude_constant=False is
    the old convention (kept with sigma 1), to show the invariance tests can fail."""
    with torch.no_grad():
        feats = model[:-1](x)
    head = model[-1]
    std, rms = feats.std(dim=0, correction=0), feats.pow(2).mean(dim=0).sqrt()
    keep = std > 1e-9 * rms if exclude_constant else torch.ones_like(std, dtype=torch.bool)
    offset = (feats[:, ~keep] @ head.weight.detach()[:, ~keep].T + head.bias.detach())
    sigma = torch.where(std[keep] > 0, std[keep], 1.0)  # old convention: sigma 1 for constants
    sigma = sigma if normalise else torch.ones_like(sigma)
    w_norm = head.weight.detach()[:, keep] * sigma

    def loss_of(w):
        return loss_fn((feats[:, keep] / sigma) @ w.T + offset, y)

    hess = torch.autograd.functional.hessian(loss_of, w_norm)  # (C, m, C, m)
    n_classes = w_norm.shape[0]
    kappa = 0.0
    for i in range(n_classes):
        for j in range(n_classes):
            kappa += float(w_norm[i] @ w_norm[j]) * float(torch.trace(hess[j, :, i, :]))
    return kappa


@pytest.mark.parametrize("loss_name", ["ce", "mse"])
@pytest.mark.parametrize("normalise", [True, False])
def test_relative_flatness_matches_dense_hessian(loss_name, normalise):
    x, y = _classification()
    model = _mlp(3, 5, 4, seed=2)
    if loss_name == "ce":
        loss_fn, targets = CE, y
    else:
        loss_fn, targets = MSE, torch.randn(len(x), 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    before = _state(model)
    model.train()
    kappa = relative_flatness(model, loss_fn, _split(x, targets, [5, 5, 3]), normalise_features=normalise)
    assert model.training
    _assert_unchanged(model, before)
    assert kappa == pytest.approx(_dense_kappa(model, loss_fn, x, targets, normalise), rel=1e-10)


def test_relative_flatness_reparameterisation_invariance():
    x, y = _classification(n=20)
    data = _split(x, y, [20])
    model = _mlp(3, 6, 4, seed=4)

    def rescaled(alpha):  # alpha: one positive factor per hidden neuron; same function
        m = copy.deepcopy(model)
        with torch.no_grad():
            m[0].weight.mul_(alpha[:, None])
            m[0].bias.mul_(alpha)
            m[2].weight.div_(alpha[None, :])
        return m

    uniform = rescaled(torch.full((6,), 3.7, dtype=torch.float64))
    neuron_wise = rescaled(torch.tensor([3.7, 1.0, 0.2, 5.0, 1.0, 0.5], dtype=torch.float64))
    with torch.no_grad():
        torch.testing.assert_close(neuron_wise(x), model(x))
    k0 = relative_flatness(model, CE, data)
    assert relative_flatness(uniform, CE, data) == pytest.approx(k0, rel=1e-5)
    assert relative_flatness(neuron_wise, CE, data) == pytest.approx(k0, rel=1e-5)
    # Without normalisation kappa is still invariant to a uniform layer rescaling (||W||^2 ||f||^2
    # is), but not to a neuron-wise one: that is what the feature normalisation buys.
    raw0 = relative_flatness(model, CE, data, normalise_features=False)
    assert relative_flatness(uniform, CE, data, normalise_features=False) == pytest.approx(raw0, rel=1e-5)
    raw_nw = relative_flatness(neuron_wise, CE, data, normalise_features=False)
    assert abs(raw_nw - raw0) > 0.05 * abs(raw0)


def test_relative_flatness_unequal_batches_and_classifier_choice():
    x, y = _classification(n=17)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = _mlp(3, 5)
            self.classifier = nn.Linear(5, 4).double()
            self.unused_probe = nn.Linear(5, 2).double()  # the last Linear: must not be picked

        def forward(self, x):
            return self.classifier(torch.relu(self.body(x)))

    torch.manual_seed(5)
    net = Net()
    one = relative_flatness(net, CE, [(x, y)])
    assert relative_flatness(net, CE, _split(x, y, [8, 8, 1])) == pytest.approx(one, rel=1e-10)
    assert relative_flatness(net, CE, [(x, y)], classifier=net.classifier) == one
    with pytest.raises(ValueError):  # a hidden layer's output is not the model output
        relative_flatness(net, CE, [(x, y)], classifier=net.body[0])


def _circles_with_constant_units(seed=6):
    """Two concentric circles (radii 1 and 0.5, 40 points) and a ReLU net 2-16-16-2 whose last
    hidden layer has two dead units (0, 1: never active on the data) and one constant unit
    (2: no input weights, bias 0.7), as training leaves them."""
    g = torch.Generator().manual_seed(seed)
    angle = 2 * math.pi * torch.rand(40, generator=g, dtype=torch.float64)
    radius = torch.where(torch.arange(40) < 20, 1.0, 0.5).double()
    x = torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1)
    y = (torch.arange(40) < 20).long()
    model = _mlp(2, 16, 16, 2, seed=seed)
    with torch.no_grad():
        model[2].bias[:2] = -100.0
        model[2].weight[2] = 0.0
        model[2].bias[2] = 0.7
    return model, x, y


def test_relative_flatness_ignores_constant_features():
    """Changing what only constant features feed (a dead unit's outgoing weights; a constant unit's,
    with the classifier bias compensating) leaves the function and kappa unchanged."""
    model, x, y = _circles_with_constant_units()
    data = _split(x, y, [25, 15])
    result = relative_flatness_result(model, CE, data)
    assert result.n_features == 16 and result.n_constant >= 3
    assert result.kappa == pytest.approx(_dense_kappa(model, CE, x, y), rel=1e-10)
    g = torch.Generator().manual_seed(0)
    dead, const = copy.deepcopy(model), copy.deepcopy(model)
    with torch.no_grad():
        dead[-1].weight[:, :2] = 5 * torch.randn(2, 2, generator=g, dtype=torch.float64)
        delta = 3 * torch.randn(2, generator=g, dtype=torch.float64)
        const[-1].weight[:, 2] += delta
        const[-1].bias -= 0.7 * delta
        for changed in (dead, const):
            torch.testing.assert_close(changed(x), model(x), rtol=0, atol=1e-12)
    for normalise in (True, False):
        k0 = relative_flatness(model, CE, data, normalise_features=normalise)
        for changed in (dead, const):
            kappa = relative_flatness(changed, CE, data, normalise_features=normalise)
            assert kappa == pytest.approx(k0, rel=1e-4)
    # The test can fail: keeping the dead columns (the old convention) moves kappa.
    old = lambda m: _dense_kappa(m, CE, x, y, exclude_constant=False)
    assert abs(old(dead) - old(model)) > 0.1 * abs(old(model))


@pytest.mark.parametrize("alpha", [3.7, 0.2])
def test_relative_flatness_layer_rescaling_with_dead_units(alpha):
    """Last hidden layer (weight and bias) x alpha, classifier weight / alpha: same ReLU function,
    same kappa, with or without feature normalisation, dead units included."""
    model, x, y = _circles_with_constant_units(seed=7)
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        scaled[2].weight.mul_(alpha)
        scaled[2].bias.mul_(alpha)
        scaled[-1].weight.div_(alpha)
        torch.testing.assert_close(scaled(x), model(x))
    data = _split(x, y, [40])
    for normalise in (True, False):
        k0 = relative_flatness(model, CE, data, normalise_features=normalise)
        kappa = relative_flatness(scaled, CE, data, normalise_features=normalise)
        assert kappa == pytest.approx(k0, rel=1e-4)
    old = lambda m: _dense_kappa(m, CE, x, y, exclude_constant=False)
    assert abs(old(scaled) - old(model)) > 0.1 * abs(old(model))


def test_relative_flatness_float32_constant_with_rounding_jitter():
    """A unit constant in exact arithmetic (100 (x1 + x2 - x3) + 2 with x3 = fl32(x1 + x2)) jitters
    by ~3e-6 of its value in float32: it is constant too, else the normalised feature (~3e5) would
    blow kappa up ~1e11-fold."""
    g = torch.Generator().manual_seed(8)
    x12 = torch.randn(30, 2, generator=g)
    x = torch.cat([x12, x12.sum(dim=1, keepdim=True)], dim=1)
    y = torch.randint(0, 3, (30,), generator=g)
    model = _mlp(3, 6, 3, seed=8).float()
    with torch.no_grad():
        model[0].weight[0] = torch.tensor([100.0, 100.0, -100.0])
        model[0].bias[0] = 2.0
    exact = copy.deepcopy(model)
    with torch.no_grad():
        exact[0].weight[0] = 0.0  # the same unit, exactly constant
        jitter = model[:-1](x)[:, 0]
    assert 1e-7 < float(jitter.double().std()) / 2.0 < 1e-5
    result = relative_flatness_result(model, CE, [(x, y)])
    assert result.n_constant == relative_flatness_result(exact, CE, [(x, y)]).n_constant >= 1
    assert result.kappa == pytest.approx(relative_flatness(exact, CE, [(x, y)]), rel=1e-4)


# ---------------------------------------------------------------- SAM-sharpness


def _bn_model(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 4)).double()
    model.train()
    with torch.no_grad():  # give the running statistics values far from their (0, 1) init
        for _ in range(3):
            model(2.0 + 3.0 * torch.randn(16, 3, dtype=torch.float64))
    return model


def _naive_sharpness(model, loss_fn, batches, rho, n_draws, seed):
    """Direct loop: deepcopy, add delta in place, evaluate; the same z sequence."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    d = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(len(x) for x, _ in batches)

    def loss(m):
        m.eval()
        with torch.no_grad():
            return sum(float(loss_fn(m(x), y)) * len(x) / total for x, y in batches)

    base = loss(copy.deepcopy(model))
    gen = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(n_draws):
        z = torch.randn(d, generator=gen, dtype=torch.float64)
        m = copy.deepcopy(model)
        offset = 0
        params = dict(m.named_parameters())
        with torch.no_grad():
            for n in names:
                p = params[n]
                p.add_(rho * z[offset : offset + p.numel()].view_as(p) / math.sqrt(d))
                offset += p.numel()
        values.append(abs(loss(m) - base) / rho)
    return np.array(values), base


def _check(est, values, base):
    assert est.mean == pytest.approx(values.mean(), rel=1e-6)
    assert est.std == pytest.approx(values.std(), rel=1e-6)
    assert est.median == pytest.approx(np.median(values), rel=1e-6)
    assert est.min == pytest.approx(values.min(), rel=1e-6)
    assert est.max == pytest.approx(values.max(), rel=1e-6)
    assert est.stderr == pytest.approx(values.std(ddof=1) / math.sqrt(len(values)), rel=1e-6)
    assert est.base_loss == pytest.approx(base, rel=1e-12)
    assert est.n_forward == len(values) + 1


@pytest.mark.parametrize("vectorise", [True, False])
def test_sam_sharpness_matches_naive_loop_and_leaves_state_alone(vectorise):
    x, y = _classification(n=19)
    batches = _split(x, y, [8, 8, 3])
    model = _bn_model()
    before, rng = _state(model), torch.random.get_rng_state()
    rhos = [0.05, 0.5]
    ests = sam_sharpness_sweep(model, CE, batches, rhos, n_draws=8, seed=3, chunk_size=3, vectorise=vectorise)
    assert torch.equal(torch.random.get_rng_state(), rng)
    _assert_unchanged(model, before)  # weights and BatchNorm running statistics
    assert model.training
    for rho, est in zip(rhos, ests):
        values, base = _naive_sharpness(model, CE, batches, rho, 8, seed=3)
        assert est.rho == rho and est.n_draws == 8 and est.seed == 3
        _check(est, values, base)
    # Common random numbers: one rho alone gives the same numbers as inside the sweep.
    assert sam_sharpness(model, CE, batches, 0.5, n_draws=8, seed=3, chunk_size=3, vectorise=vectorise) == ests[1]


def test_sam_sharpness_falls_back_when_vmap_fails():
    class Branchy(nn.Module):  # data-dependent control flow has no vmap rule
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 4).double()

        def forward(self, x):
            out = self.lin(x)
            return out if bool(out.sum() > -1e9) else -out

    torch.manual_seed(0)
    model = Branchy()
    x, y = _classification(n=9)
    est = sam_sharpness(model, CE, [(x, y)], 0.1, n_draws=5, seed=1)
    _check(est, *_naive_sharpness(model, CE, [(x, y)], 0.1, 5, seed=1))


def test_sam_sharpness_seeds_and_chunking():
    x, y = _classification(n=12)
    model = _mlp(3, 5, 4)
    a = sam_sharpness(model, CE, [(x, y)], 0.1, n_draws=10, seed=7)
    assert sam_sharpness(model, CE, [(x, y)], 0.1, n_draws=10, seed=7) == a
    # The z sequence does not depend on the chunking (only float round-off in batched matmuls may).
    chunked = sam_sharpness(model, CE, [(x, y)], 0.1, n_draws=10, seed=7, chunk_size=4)
    assert chunked.mean == pytest.approx(a.mean, rel=1e-12) and chunked.max == pytest.approx(a.max, rel=1e-12)
    b = sam_sharpness(model, CE, [(x, y)], 0.1, n_draws=10, seed=8)
    assert b.mean != a.mean and b.max != a.max


def test_sam_sharpness_quadratic_closed_form_at_minimum():
    # Linear regression with MSE at its least-squares minimum: the gradient is 0 and
    # L(w + delta) - L(w) = delta^T A delta >= 0 with A = mean_n xt_n xt_n^T, xt = (x, 1).
    # With delta = rho z / sqrt(d): value = rho / d * z^T A z, E = rho tr(A) / d, Var = 2 (rho/d)^2 tr(A^2).
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, generator=g, dtype=torch.float64) @ torch.tensor([[1.0, 0, 0], [0.5, 2, 0], [0, 0, 0.3]], dtype=torch.float64)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64) + 0.3 * torch.randn(50, 1, generator=g, dtype=torch.float64)
    xt = torch.cat([x, torch.ones(50, 1, dtype=torch.float64)], dim=1)
    theta = torch.linalg.lstsq(xt, y).solution.squeeze(1)
    model = nn.Linear(3, 1).double()
    with torch.no_grad():
        model.weight.copy_(theta[:3].unsqueeze(0))
        model.bias.copy_(theta[3:])
    a = xt.T @ xt / len(xt)
    d, rho, n_draws = 4, 0.2, 4000
    expected = rho * torch.trace(a).item() / d
    se = rho / d * math.sqrt(2 * torch.trace(a @ a).item() / n_draws)
    est = sam_sharpness(model, MSE, _split(x, y, [20, 30]), rho, n_draws=n_draws, seed=0)
    assert abs(est.mean - expected) < 4 * se
    assert est.stderr == pytest.approx(se, rel=0.1)


def _large_loss_regression(n=200, seed=0):
    """A float32 ReLU MLP nowhere near 1000 x Rosenbrock on [-3.5, 3.5]^2: MSE ~3e13, where a
    perturbation at rho 5e-4 changes L by ~1e-7 of itself, below float32's resolution."""
    from raystudy.tasks.functions import rosenbrock

    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g) * 7 - 3.5
    model = _mlp(2, 16, 16, 1, seed=seed).float()
    return model, _split(x, 1e3 * rosenbrock(x), [120, 80])


def test_sam_sharpness_float64_where_float32_cannot_resolve_the_difference():
    model, batches = _large_loss_regression()
    before = _state(model)
    rho, n = 5e-4, 40
    est = sam_sharpness(model, MSE, batches, rho, n_draws=n, seed=2, chunk_size=16)
    _assert_unchanged(model, before)
    assert next(model.parameters()).dtype == torch.float32 and model.training
    # Independent reference: plain loop on a float64 copy, same z sequence.
    wide = copy.deepcopy(model).double()
    values, base = _naive_sharpness(wide, MSE, [(x.double(), y.double()) for x, y in batches], rho, n, seed=2)
    assert base >= 1e7
    ref, se = values.mean(), values.std(ddof=1) / math.sqrt(n)
    assert est.precision == "float64" and est.n_forward == 1 + n + 1 + 4
    assert abs(est.mean - ref) <= 3 * se + 0.01 * ref
    assert est.mean == pytest.approx(ref, rel=1e-6)  # in fact the same numbers
    assert est.base_loss == pytest.approx(base, rel=1e-12)
    # The test can fail: the plain float32 computation is off by far more.
    narrow = sam_sharpness(model, MSE, batches, rho, n_draws=n, seed=2, precision="native")
    assert narrow.precision == "float32" and abs(narrow.mean - ref) > 3 * se + 0.01 * ref
    forced = sam_sharpness(model, MSE, batches, rho, n_draws=n, seed=2, precision="float64")
    assert forced.mean == est.mean and forced.n_forward == 1 + n + 1


def test_sam_sharpness_keeps_float32_where_it_is_accurate():
    x, y = _classification(n=30)
    model = _mlp(3, 8, 4, seed=3).float()
    batches = _split(x.float(), y, [30])
    rhos, n = [0.5, 1.0], 12
    ests = sam_sharpness_sweep(model, CE, batches, rhos, n_draws=n, seed=4)
    wide = copy.deepcopy(model).double()
    for rho, est in zip(rhos, ests):
        values, _ = _naive_sharpness(wide, CE, [(x, y)], rho, n, seed=4)
        assert est.precision == "float32" and est.n_forward == 1 + n + 1 + 4
        assert est.mean == pytest.approx(values.mean(), rel=1e-3)
    with pytest.raises(ValueError, match="precision"):
        sam_sharpness(model, CE, batches, 0.5, precision="bfloat16")
