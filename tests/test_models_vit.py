"""The small-data ViT (SPT + LSA): counts and shifts by hand, the self-attention mask, the learned
temperature, training, and the functional transforms raystudy's geometry code applies to it."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from raystudy.geometry.fisher_rao import count_weight_layers
from raystudy.geometry.hvp import HessianOperator
from raystudy.models import create_model

TINY = {"dim": 16, "depth": 2, "heads": 2, "dim_head": 8, "mlp_dim": 12}


pytestmark = pytest.mark.usefixtures("one_thread")


def vit(in_shape=(3, 8, 8), out_dim=5, seed=0, **kw):
    torch.manual_seed(seed)
    return create_model("vit_small_data", in_shape=in_shape, out_dim=out_dim, **{**TINY, **kw})


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_param_count_by_hand_small_and_protocol():
    # 3x8x8, patch 4 (4 patches), dim 16, depth 2, heads 2 x 8, MLP 12, 5 classes.
    patch_dim = 4 * 4 * 5 * 3  # SPT: 5C channels per pixel
    spt = 2 * patch_dim + patch_dim * 16 + 16  # LayerNorm + Linear
    embed = (4 + 1) * 16 + 16  # position embeddings (cls + patches) + cls token
    block = 2 * 16 + 16 * 3 * 16 + 1 + (16 * 16 + 16) + 2 * 16 + (16 * 12 + 12 + 12 * 16 + 16)
    #       LN1     qkv (no bias)  temp  attn out proj   LN2     MLP
    head = 2 * 16 + 16 * 5 + 5
    assert n_params(vit()) == spt + embed + 2 * block + head == 7583
    # The protocol's ViT: 3x32x32, patch 4 (64 patches), dim 512, depth 6, heads 6 x 64, MLP 256.
    with torch.device("meta"):
        full = create_model("vit_small_data", in_shape=(3, 32, 32), out_dim=10)
    spt = 2 * 240 + 240 * 512 + 512
    embed = 65 * 512 + 512
    block = 2 * 512 + 512 * 3 * 384 + 1 + (384 * 512 + 512) + 2 * 512 + (512 * 256 + 256 + 256 * 512 + 512)
    assert n_params(full) == spt + embed + 6 * block + 2 * 512 + 512 * 10 + 10 == 6_475_248
    assert count_weight_layers(full) == 1 + 6 * 4 + 1  # patch Linear, (qkv, out, fc1, fc2) per block, head


def test_shifted_patch_tokens_by_hand():
    spt = vit(in_shape=(1, 4, 4), patch_size=2).patch_embed
    x = torch.arange(1.0, 17.0).reshape(1, 1, 4, 4)
    # Authors' code (vit-pytorch): 1-pixel shifts right, left, down, up; zeros fill the gap.
    right = [[0, 1, 2, 3], [0, 5, 6, 7], [0, 9, 10, 11], [0, 13, 14, 15]]
    left = [[2, 3, 4, 0], [6, 7, 8, 0], [10, 11, 12, 0], [14, 15, 16, 0]]
    down = [[0, 0, 0, 0], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
    up = [[5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16], [0, 0, 0, 0]]
    expected = torch.tensor([x[0, 0].tolist(), right, left, down, up]).unsqueeze(0)
    assert torch.equal(spt.shifted(x), expected)
    # Lee et al.: half-patch (here 1-pixel) shifts along the diagonals.
    diag = vit(in_shape=(1, 4, 4), patch_size=2, shifts="diagonal").patch_embed
    right_down = [[0, 0, 0, 0], [0, 1, 2, 3], [0, 5, 6, 7], [0, 9, 10, 11]]
    left_down = [[0, 0, 0, 0], [2, 3, 4, 0], [6, 7, 8, 0], [10, 11, 12, 0]]
    right_up = [[0, 5, 6, 7], [0, 9, 10, 11], [0, 13, 14, 15], [0, 0, 0, 0]]
    left_up = [[6, 7, 8, 0], [10, 11, 12, 0], [14, 15, 16, 0], [0, 0, 0, 0]]
    expected = torch.tensor([x[0, 0].tolist(), right_down, left_down, right_up, left_up]).unsqueeze(0)
    assert torch.equal(diag.shifted(x), expected)
    # Patches in row-major order, each flattened (row, column, channel).
    two = torch.stack([x[0, 0], 100 + x[0, 0]]).unsqueeze(0)  # 2 channels
    patches = spt.patches(two)
    assert patches.shape == (1, 4, 8)
    assert patches[0, 0].tolist() == [1, 101, 2, 102, 5, 105, 6, 106]
    assert patches[0, 3].tolist() == [11, 111, 12, 112, 15, 115, 16, 116]
    # The tokens are LayerNorm -> Linear of those patches.
    with torch.no_grad():
        tokens = spt(x)
        assert torch.allclose(tokens, spt.proj(spt.norm(spt.patches(spt.shifted(x)))))
    assert tokens.shape == (1, 4, TINY["dim"])


def test_lsa_masks_self_attention():
    model = vit().eval()
    seen = []
    hooks = [b.attn.attend.register_forward_hook(lambda m, i, o: seen.append(o)) for b in model.blocks]
    with torch.no_grad():
        model(torch.randn(3, 3, 8, 8))
    for h in hooks:
        h.remove()
    assert len(seen) == TINY["depth"]
    for attn in seen:
        assert attn.shape == (3, TINY["heads"], 5, 5)  # cls + 4 patch tokens
        assert torch.all(torch.diagonal(attn, dim1=-2, dim2=-1) == 0)  # no token attends to itself
        assert torch.allclose(attn.sum(-1), torch.ones(3, TINY["heads"], 5))
        off = attn.masked_select(~torch.eye(5, dtype=torch.bool))
        assert torch.all(off > 0)


def test_temperature_is_learnable():
    model = vit()
    attn = model.blocks[0].attn
    assert isinstance(attn.temperature, torch.nn.Parameter) and attn.temperature.requires_grad
    assert attn.temperature.item() == pytest.approx(math.log(TINY["dim_head"] ** -0.5))
    assert "blocks.0.attn.temperature" in dict(model.named_parameters())
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    F.cross_entropy(model(x), y).backward()
    assert attn.temperature.grad is not None and attn.temperature.grad.abs() > 0
    before = model(x).detach()
    with torch.no_grad():
        attn.temperature += 1.0
    assert not torch.allclose(model(x), before)


def test_trains_on_random_data():
    model = vit(out_dim=4, dim=32, heads=2, dim_head=16, mlp_dim=32)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, 8, 8, generator=gen), torch.randint(0, 4, (32,), generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0]


def test_vmap_over_parameter_sets_matches_a_loop():
    model = vit().double().eval()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    base = {k: v.detach() for k, v in model.named_parameters()}
    gen = torch.Generator().manual_seed(1)
    stacked = {k: v + 0.01 * torch.randn(4, *v.shape, generator=gen, dtype=v.dtype) for k, v in base.items()}
    vmapped = torch.func.vmap(lambda p: torch.func.functional_call(model, p, (x,)))(stacked)
    looped = torch.stack([torch.func.functional_call(model, {k: v[i] for k, v in stacked.items()}, (x,))
                          for i in range(4)])
    assert vmapped.shape == (4, 3, 5)
    assert torch.allclose(vmapped, looped, rtol=0, atol=1e-12)


def test_hessian_vector_products_agree_across_modes():
    """Double backward, forward-over-reverse and a central difference of gradients (float64)."""
    model = vit(in_shape=(1, 4, 4), out_dim=3, patch_size=2, dim=8, depth=1, heads=2, dim_head=4, mlp_dim=8)
    model = model.double().eval()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(6, 1, 4, 4, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 3, (6,), generator=gen)
    names = [k for k, _ in model.named_parameters()]
    theta = [p.detach() for p in model.parameters()]
    v = [torch.randn(p.shape, dtype=torch.float64, generator=gen) for p in theta]

    def loss(*params):
        return F.cross_entropy(torch.func.functional_call(model, dict(zip(names, params)), (x,)), y)

    def grad(*params):
        return torch.func.grad(loss, argnums=tuple(range(len(params))))(*params)

    leaves = [t.clone().requires_grad_() for t in theta]
    g = torch.autograd.grad(loss(*leaves), leaves, create_graph=True)
    rev_rev = torch.autograd.grad(g, leaves, grad_outputs=v)
    fwd_rev = torch.func.jvp(grad, tuple(theta), tuple(v))[1]
    eps = 1e-5
    plus = grad(*[t + eps * d for t, d in zip(theta, v)])
    minus = grad(*[t - eps * d for t, d in zip(theta, v)])
    central = [(a - b) / (2 * eps) for a, b in zip(plus, minus)]
    flat = lambda ts: torch.cat([t.reshape(-1) for t in ts])  # noqa: E731
    assert flat(rev_rev).norm() > 1e-3
    assert torch.allclose(flat(rev_rev), flat(fwd_rev), rtol=1e-9, atol=1e-11)
    assert torch.allclose(flat(rev_rev), flat(central), rtol=1e-5, atol=1e-8)
    # raystudy's Hessian engine, both backends, gives the same product.
    for backend in ("rev-rev", "fwd-rev"):
        op = HessianOperator(model, F.cross_entropy, [(x, y)], backend=backend)
        assert torch.allclose(op.matvec(flat(v)), flat(rev_rev), rtol=1e-9, atol=1e-11)


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="unknown shifts 'random'"):
        vit(shifts="random")
    with pytest.raises(ValueError, match="diagonal shifts"):
        vit(patch_size=1, shifts="diagonal")
    with pytest.raises(ValueError, match="heads=0"):
        vit(heads=0)
    with pytest.raises(ValueError, match="dropout"):
        vit(dropout=1.0)
