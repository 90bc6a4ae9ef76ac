"""Model registry: shapes, the classifier contract, parameter counts, seeded construction."""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from raystudy.models import create_model, list_models, register_model

TYPICAL = [  # (name, kwargs, in_shape, out_dim)
    ("mlp", {}, (2,), 1),
    ("mlp", {"hidden": [100, 100]}, (2,), 2),
    ("mlp", {"hidden": [16], "activation": "tanh"}, (1, 8, 8), 10),
    ("cnn_bn", {"width": 8}, (1, 8, 8), 10),
    ("cnn_bn", {"width": 8}, (3, 32, 32), 100),
    ("resnet18_cifar", {}, (3, 32, 32), 10),
    ("vgg19_bn_cifar", {}, (3, 32, 32), 10),
]


@pytest.mark.parametrize("name,kwargs,in_shape,out_dim", TYPICAL)
def test_shapes_and_classifier_is_last_linear(name, kwargs, in_shape, out_dim):
    model = create_model(name, in_shape=in_shape, out_dim=out_dim, **kwargs).eval()
    x = torch.randn(2, *in_shape)
    with torch.no_grad():
        out = model(x)
        feats = model.forward_features(x)
    assert out.shape == (2, out_dim)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears[-1] is model.classifier
    assert feats.shape == (2, model.classifier.in_features)
    assert torch.allclose(model.classifier(feats), out)
    # The classifier is registered once: no duplicated state-dict entries.
    assert sum(k.startswith("classifier.") for k in model.state_dict()) == 2


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_protocol_mlp_param_counts():
    # 2->64->64->1 and 2->100->100->2, counted by hand (weights + biases).
    assert n_params(create_model("mlp", in_shape=(2,), out_dim=1)) == 2 * 64 + 64 + 64 * 64 + 64 + 64 + 1
    assert n_params(create_model("mlp", in_shape=(2,), out_dim=2, hidden=[100, 100])) == 300 + 10100 + 202


def test_resnet18_cifar_is_timm_resnet18_with_cifar_stem():
    model = create_model("resnet18_cifar", in_shape=(3, 32, 32), out_dim=10)
    ref = timm.create_model("resnet18", pretrained=False, num_classes=10)
    # timm's count minus the 7x7 stem plus a 3x3 one.
    assert n_params(model) == n_params(ref) - 64 * 3 * 49 + 64 * 3 * 9 == 11_173_962
    assert model.body.conv1.kernel_size == (3, 3) and model.body.conv1.stride == (1, 1)
    assert isinstance(model.body.maxpool, nn.Identity)
    ours = {k.removeprefix("body.").replace("classifier.", "fc."): v.shape for k, v in model.state_dict().items()}
    theirs = {k: v.shape for k, v in ref.state_dict().items()}
    assert ours.keys() == theirs.keys()
    assert all(ours[k] == theirs[k] for k in ours if k != "conv1.weight")
    # Stride-1 stem, no max-pool: 32x32 input keeps 4x4 maps at the last stage (ImageNet stem: 1x1).
    assert model.body.forward_features(torch.zeros(1, 3, 32, 32)).shape == (1, 512, 4, 4)


def test_vgg19_bn_cifar_param_count_by_hand():
    cfg = [64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512]
    chans = [3] + cfg
    convs = sum(9 * a * b + b for a, b in zip(chans, cfg))  # conv weight + bias
    bns = sum(2 * c for c in cfg)
    model = create_model("vgg19_bn_cifar", in_shape=(3, 32, 32), out_dim=10)
    assert n_params(model) == convs + bns + 512 * 10 + 10 == 20_040_522
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 5
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 16


@pytest.mark.parametrize("name,kwargs,in_shape,out_dim", [TYPICAL[0], TYPICAL[3], TYPICAL[5]])
def test_same_seed_same_weights(name, kwargs, in_shape, out_dim):
    with torch.random.fork_rng():
        torch.manual_seed(11)
        a = create_model(name, in_shape=in_shape, out_dim=out_dim, **kwargs)
        torch.manual_seed(11)
        b = create_model(name, in_shape=in_shape, out_dim=out_dim, **kwargs)
        torch.manual_seed(12)
        c = create_model(name, in_shape=in_shape, out_dim=out_dim, **kwargs)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["classifier.weight"], sc["classifier.weight"])


def test_registry_errors_and_listing():
    assert {"mlp", "cnn_bn", "resnet18_cifar", "vgg19_bn_cifar"} <= set(list_models())
    with pytest.raises(KeyError, match="resnet18_cifar"):
        create_model("resnet81", in_shape=(3, 32, 32), out_dim=10)
    with pytest.raises(TypeError):
        create_model("mlp", in_shape=(2,), out_dim=1, widths=[3])
    with pytest.raises(TypeError):
        create_model("resnet18_cifar", in_shape=(3, 32, 32), out_dim=10, width=3)
    with pytest.raises(ValueError, match="activation"):
        create_model("mlp", in_shape=(2,), out_dim=1, activation="gelu")
    with pytest.raises(ValueError, match="C, H, W"):
        create_model("cnn_bn", in_shape=(2,), out_dim=1)
    with pytest.raises(ValueError, match="32"):
        create_model("vgg19_bn_cifar", in_shape=(1, 8, 8), out_dim=10)
    with pytest.raises(ValueError, match="already registered"):
        register_model("mlp")(lambda **kw: nn.Linear(1, 1))
