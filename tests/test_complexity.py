"""Function complexity: input-gradient norm and linear-region density against known answers."""
import pytest
import torch
from torch import nn

from raystudy.safety import input_gradient_norm, linear_region_density, pattern_changes

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def batches(x, size):
    return [(x[i : i + size], torch.zeros(len(x[i : i + size]))) for i in range(0, len(x), size)]


def one_hidden(d=3, h=16, c=4, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, c)).to(F64)


@pytest.mark.parametrize("c", [1, 5])
def test_input_gradient_norm_of_linear_model_is_frobenius_norm(c):
    torch.manual_seed(0)
    model = nn.Linear(6, c).to(F64)
    x = torch.randn(23, 6, dtype=F64)
    res = input_gradient_norm(model, batches(x, 10))
    assert res.mean == pytest.approx(float(model.weight.detach().norm()), rel=1e-12)
    assert res.std < 1e-12 and (res.n_samples, res.n_outputs, res.n_backward) == (23, c, 3 * c)


def test_input_gradient_norm_of_scalar_output():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 1), nn.Flatten(0))  # (n,) outputs: the gradient's L2 norm
    x = torch.randn(9, 4)
    expected = float(model[0].weight.detach().norm())
    assert input_gradient_norm(model, [(x, x[:, 0])]).mean == pytest.approx(expected, rel=1e-6)


def test_input_gradient_norm_of_relu_net_by_hand():
    # J(x) = W2 diag(1[W1 x + b1 > 0]) W1 for each sample, in float64
    model, x = one_hidden(), torch.randn(40, 3, dtype=F64)
    w1, b1, w2 = model[0].weight.detach(), model[0].bias.detach(), model[2].weight.detach()
    by_hand = torch.stack([(w2 * ((w1 @ xi + b1) > 0)) @ w1 for xi in x]).flatten(1).norm(dim=1)
    res = input_gradient_norm(model, batches(x, 16))
    assert res.mean == pytest.approx(float(by_hand.mean()), rel=1e-12)
    assert res.std == pytest.approx(float(by_hand.std(correction=0)), rel=1e-10)
    assert res.max == pytest.approx(float(by_hand.max()), rel=1e-12)


def test_input_gradient_norm_with_batchnorm_matches_per_sample_jacobian():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).to(F64)
    model(torch.randn(32, 3, dtype=F64))  # running statistics move away from (0, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(12, 3, dtype=F64)
    res = input_gradient_norm(model, batches(x, 5))
    model.eval()
    loop = [torch.autograd.functional.jacobian(lambda v: model(v[None])[0], xi).norm() for xi in x]
    assert res.mean == pytest.approx(float(torch.stack(loop).detach().mean()), rel=1e-12)
    model.train()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def kinks(model, p, u, length):
    """Kink positions t_j = -(w_j.p + b_j) / (w_j.u) of each hidden unit inside |t| < length/2."""
    w, b = model[0].weight.detach(), model[0].bias.detach()
    t = -(w @ p + b) / (w @ u)
    return torch.sort(t[t.abs() < length / 2]).values


@pytest.mark.parametrize("seed", range(5))
def test_pattern_changes_match_analytic_kinks(seed):
    model, length, n_points = one_hidden(seed=seed), 4.0, 4001
    g = torch.Generator().manual_seed(seed)
    p, u = torch.randn(3, generator=g, dtype=F64), torch.randn(3, generator=g, dtype=F64)
    u = u / u.norm()
    t = kinks(model, p, u, length)
    assert len(t) >= 3 and (t.diff() > length / (n_points - 1)).all()  # resolvable by the sampling
    assert pattern_changes(model, p, u, length, n_points, chunk_size=700) == len(t)
    # coarse sampling can only merge kinks: a lower bound
    assert pattern_changes(model, p, u, length, 4) <= len(t)


def test_linear_region_density_one_dimensional_inputs():
    # In 1-D the direction is +-1 and the segment is symmetric about its anchor, so with one line per
    # sample the density is the mean over samples of the kinks within length/2, over length.
    model, length = one_hidden(d=1, h=24, c=2, seed=3), 2.0
    x = torch.linspace(-2, 2, 12, dtype=F64)[:, None]
    one = torch.ones(1, dtype=F64)
    expected = torch.tensor([float(len(kinks(model, xi, one, length))) for xi in x], dtype=F64) / length
    res = linear_region_density(model, batches(x, 5), n_lines=12, n_points=20001, length=length, seed=9)
    assert sorted(res.counts) == sorted((expected * length).int().tolist())
    assert res.mean == pytest.approx(float(expected.mean()), rel=1e-12) and res.mean > 0
    assert res.stderr == pytest.approx(float(expected.std(correction=1) / 12**0.5), rel=1e-12)
    assert (res.n_lines, res.n_units, res.resolution) == (12, 24, 1e-4)


def test_linear_region_density_of_a_net_linear_around_the_data_is_zero():
    model = one_hidden()
    with torch.no_grad():
        model[0].bias.fill_(100.0)  # every hidden unit active on and near the data
    x = torch.randn(10, 3, dtype=F64)
    res = linear_region_density(model, [(x, x[:, 0])], n_lines=5, n_points=101)
    assert res.counts == (0,) * 5 and res.mean == 0.0


def test_linear_region_density_seeded_and_global_rng_untouched():
    model, x = one_hidden(), torch.randn(30, 3, dtype=F64)
    rng = torch.get_rng_state()
    kw = dict(n_lines=25, n_points=257, length=3.0)
    a, b = (linear_region_density(model, batches(x, 7), seed=4, **kw) for _ in range(2))
    c = linear_region_density(model, batches(x, 7), seed=5, **kw)
    more = linear_region_density(model, batches(x, 7), seed=4, n_lines=50, n_points=257, length=3.0)
    assert a == b and a.counts != c.counts and len(more.counts) == 50  # 50 > 30 samples: with replacement
    assert torch.equal(torch.get_rng_state(), rng)


def test_bad_models_and_inputs_raise():
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match="no nn.ReLU"):
        linear_region_density(nn.Linear(3, 2), [(x, x)])
    with pytest.raises(ValueError, match="floating point"):
        linear_region_density(one_hidden().float(), [(x.to(torch.uint8), x)])
    with pytest.raises(ValueError, match="floating point"):
        input_gradient_norm(nn.Linear(3, 2), [(x.long(), x)])
