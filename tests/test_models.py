"""Model registry: shapes, the classifier contract, parameter counts by hand, the authors'
initialisation, the small-data ViT (SPT, LSA, vmap, double backward), pretrained loading from a
local file, and the plan-time check."""
from __future__ import annotations

import math

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from raystudy.geometry.fisher_rao import count_weight_layers
from raystudy.models import check_model, create_model, list_models, model_kwargs, register_model
from raystudy.models import registry

TINY_VIT = {"dim": 16, "depth": 2, "heads": 2, "dim_head": 8, "mlp_dim": 12}

TYPICAL = [  # (name, kwargs, in_shape, out_dim)
    ("mlp", {}, (2,), 1),
    ("mlp", {"hidden": [100, 100]}, (2,), 2),
    ("mlp", {"hidden": [16], "activation": "tanh"}, (1, 8, 8), 10),
    ("cnn_bn", {"width": 8}, (1, 8, 8), 10),
    ("cnn_bn", {"width": 8}, (3, 32, 32), 100),
    ("resnet18_cifar", {}, (3, 32, 32), 10),
    ("vgg19_bn_cifar", {}, (3, 32, 32), 10),
    ("vit_small_data", {}, (3, 32, 32), 10),
    ("vit_small_data", TINY_VIT, (1, 8, 8), 10),
    ("resnet18_imagenet", {}, (3, 64, 64), 200),
]


pytestmark = pytest.mark.usefixtures("one_thread")


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def on_meta(name, in_shape, out_dim, **kw):
    with torch.device("meta"):
        return create_model(name, in_shape=in_shape, out_dim=out_dim, **kw)


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
    assert model.pretrained_weights is None


def test_protocol_mlp_param_counts():
    # 2->64->64->1 and 2->100->100->2, counted by hand (weights + biases).
    assert n_params(create_model("mlp", in_shape=(2,), out_dim=1)) == 2 * 64 + 64 + 64 * 64 + 64 + 64 + 1
    assert n_params(create_model("mlp", in_shape=(2,), out_dim=2, hidden=[100, 100])) == 300 + 10100 + 202


def test_resnet18_cifar_is_timm_resnet18_with_cifar_stem_and_gamma_one():
    model = create_model("resnet18_cifar", in_shape=(3, 32, 32), out_dim=10)
    ref = timm.create_model("resnet18", pretrained=False, num_classes=10)
    # timm's count minus the 7x7 stem plus a 3x3 one.
    assert n_params(model) == n_params(ref) - 64 * 3 * 49 + 64 * 3 * 9 == 11_173_962
    body = model.body
    assert body.conv1.kernel_size == (3, 3) and body.conv1.stride == (1, 1)
    assert isinstance(body.maxpool, nn.Identity)
    ours = {k.removeprefix("body.").replace("classifier.", "fc."): v.shape for k, v in model.state_dict().items()}
    theirs = {k: v.shape for k, v in ref.state_dict().items()}
    assert ours.keys() == theirs.keys()
    assert all(ours[k] == theirs[k] for k in ours if k != "conv1.weight")
    # Stride-1 stem, no max-pool: 32x32 input keeps 4x4 maps at the last stage (ImageNet stem: 1x1).
    assert body.forward_features(torch.zeros(1, 3, 32, 32)).shape == (1, 512, 4, 4)
    # The authors' ResNet-18: every BatchNorm starts at gamma = 1, beta = 0 (timm zeroes each block's bn2).
    blocks = [b for stage in (body.layer1, body.layer2, body.layer3, body.layer4) for b in stage]
    assert len(blocks) == 8 and all(torch.all(b.bn2.weight == 1) for b in blocks)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 1 + 16 + 3
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)
    assert count_weight_layers(model) == 1 + 16 + 3 + 1  # stem, block convs, shortcuts, classifier


def test_vgg19_bn_cifar_has_the_authors_head_param_count_by_hand():
    cfg = [64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512]
    chans = [3] + cfg
    convs = sum(9 * a * b + b for a, b in zip(chans, cfg))  # conv weight + bias
    bns = sum(2 * c for c in cfg)
    head = 512 * 512 + 512 + 2 * 512  # Linear 512->512, BatchNorm1d(512)
    model = create_model("vgg19_bn_cifar", in_shape=(3, 32, 32), out_dim=10)
    assert n_params(model) == convs + bns + head + 512 * 10 + 10 == 20_304_202
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 5
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 16
    assert [type(m) for m in model.pre_logits] == [nn.Linear, nn.BatchNorm1d, nn.ReLU]
    assert torch.all(model.pre_logits[1].weight == 1)
    assert count_weight_layers(model) == 16 + 1 + 1  # L in the Fisher-Rao factor
    # The classifier reads the head's ReLU output.
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        assert torch.equal(feats, model.pre_logits(model.features(x))) and feats.min() >= 0
    with_drop = create_model("vgg19_bn_cifar", in_shape=(3, 32, 32), out_dim=10, dropout=0.3)
    assert isinstance(with_drop.pre_logits[0], nn.Dropout) and with_drop.pre_logits[0].p == 0.3


@pytest.mark.parametrize("name", ["resnet18_cifar", "vgg19_bn_cifar"])
def test_cifar_models_use_pytorch_default_init_like_the_authors(name):
    # Kaiming-uniform with a = sqrt(5): U(-b, b), b = 1/sqrt(fan_in), so std b/sqrt(3).
    model = create_model(name, in_shape=(3, 32, 32), out_dim=10)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            bound = 1 / math.sqrt(fan_in)
            assert m.weight.abs().max() <= bound
            if m.weight.numel() > 10_000:
                assert m.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)


def test_imagenet_variants_are_timm_architectures():
    resnet = on_meta("resnet18_imagenet", (3, 64, 64), 200)
    vgg = on_meta("vgg19_bn_imagenet", (3, 64, 64), 200)
    # timm's ImageNet counts minus their 1000-class classifiers plus ours for 200 classes.
    assert n_params(resnet) == 11_689_512 - (512 * 1000 + 1000) + 512 * 200 + 200 == 11_279_112
    assert n_params(vgg) == 143_678_248 - (4096 * 1000 + 1000) + 4096 * 200 + 200 == 140_400_648
    assert resnet.body.conv1.kernel_size == (7, 7) and isinstance(resnet.body.maxpool, nn.MaxPool2d)
    # Every key of a timm ImageNet checkpoint except its classifier has a slot of the same shape.
    for model, arch, head in ((resnet, "resnet18", "fc."), (vgg, "vgg19_bn", "head.fc.")):
        with torch.device("meta"):
            ref = timm.create_model(arch, pretrained=False)
        ref_sd = {k: v.shape for k, v in ref.state_dict().items() if not k.startswith(head)}
        ours = {k.removeprefix("body."): v.shape for k, v in model.state_dict().items() if k.startswith("body.")}
        assert ours == ref_sd
    assert vgg.body.pre_logits.drop.p == 0.5 and vgg.classifier.in_features == 4096


def write_timm_checkpoint(path, arch: str) -> dict[str, torch.Tensor]:
    """A 1000-class timm ``arch`` state dict with random weights, saved as the hub's model.safetensors."""
    torch.manual_seed(123)
    sd = {k: v.contiguous() for k, v in timm.create_model(arch, pretrained=False).state_dict().items()}
    save_file(sd, str(path))
    return sd


def assert_loaded(model, sd: dict[str, torch.Tensor], head: str) -> None:
    ours = {k.removeprefix("body."): v for k, v in model.state_dict().items() if k.startswith("body.")}
    assert ours.keys() == {k for k in sd if not k.startswith(head)}
    assert all(torch.equal(ours[k], sd[k]) for k in ours)


def test_pretrained_resnet18_loads_the_file(tmp_path):
    path = tmp_path / "model.safetensors"
    sd = write_timm_checkpoint(path, "resnet18")
    model = create_model("resnet18_imagenet", in_shape=(3, 64, 64), out_dim=200, pretrained=True,
                         pretrained_file=str(path))
    assert_loaded(model, sd, "fc.")
    assert model.pretrained_weights == str(path)
    assert model.classifier.weight.shape == (200, 512)  # a new classifier, not the file's
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 200)


@pytest.mark.slow
def test_pretrained_vgg19_bn_loads_the_file(tmp_path):  # a 575 MB checkpoint: seconds
    path = tmp_path / "model.safetensors"
    sd = write_timm_checkpoint(path, "vgg19_bn")
    model = create_model("vgg19_bn_imagenet", in_shape=(3, 64, 64), out_dim=200, pretrained=True,
                         pretrained_file=str(path))
    assert_loaded(model, sd, "head.fc.")
    assert model.pretrained_weights == str(path) and model.classifier.weight.shape == (200, 4096)


@pytest.mark.parametrize("name,arch", [
    ("resnet18_imagenet", "resnet18"),
    pytest.param("vgg19_bn_imagenet", "vgg19_bn", marks=pytest.mark.slow),  # 575 MB
])
def test_torchvision_checkpoint_gives_the_authors_features(tmp_path, name, arch):
    """A torchvision .pth (what the authors loaded) through our builder: the features equal those
    of the authors' model, torchvision's network without its last Linear, on 64x64 images."""
    import torchvision

    torch.manual_seed(5)
    tv = getattr(torchvision.models, arch)().eval()
    path = tmp_path / f"{arch}.pth"
    torch.save(tv.state_dict(), path)
    model = create_model(name, in_shape=(3, 64, 64), out_dim=200, pretrained=True, pretrained_file=str(path))
    if arch == "resnet18":
        tv.fc = nn.Identity()
    else:
        tv.classifier[-1] = nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.eval().forward_features(x), tv(x), rtol=1e-4, atol=1e-5)


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """The Hugging Face hub in offline mode with an empty cache: any download attempt fails at once."""
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))


@pytest.mark.parametrize("name", ["resnet18_imagenet", "vgg19_bn_imagenet"])
def test_unreachable_weights_give_one_clear_line(offline_hub, tmp_path, name):
    with pytest.raises(ValueError) as err:
        create_model(name, in_shape=(3, 64, 64), out_dim=200, pretrained=True)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(name) and "tv_in1k" in msg
    assert "HF_HOME" in msg and "pretrained_file" in msg
    with pytest.raises(ValueError, match="not a file"):
        create_model(name, in_shape=(3, 64, 64), out_dim=200, pretrained=True,
                     pretrained_file=str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="needs pretrained: true"):
        create_model(name, in_shape=(3, 64, 64), out_dim=200, pretrained_file="x.safetensors")


@pytest.mark.parametrize("name,kwargs,in_shape,out_dim", [TYPICAL[0], TYPICAL[3], TYPICAL[5], TYPICAL[8]])
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
    assert {"mlp", "cnn_bn", "resnet18_cifar", "vgg19_bn_cifar", "vit_small_data", "resnet18_imagenet",
            "vgg19_bn_imagenet"} <= set(list_models())
    assert model_kwargs("mlp") == {"hidden": (64, 64), "activation": "relu"}
    with pytest.raises(KeyError, match="resnet18_cifar"):
        create_model("resnet81", in_shape=(3, 32, 32), out_dim=10)
    with pytest.raises(TypeError):
        create_model("mlp", in_shape=(2,), out_dim=1, widths=[3])
    with pytest.raises(TypeError):
        create_model("resnet18_cifar", in_shape=(3, 32, 32), out_dim=10, width=3)
    with pytest.raises(ValueError, match="activation"):
        create_model("mlp", in_shape=(2,), out_dim=1, activation="gelu")
    with pytest.raises(ValueError, match="hidden"):
        create_model("mlp", in_shape=(2,), out_dim=1, hidden="64")
    with pytest.raises(ValueError, match="C, H, W"):
        create_model("cnn_bn", in_shape=(2,), out_dim=1)
    with pytest.raises(ValueError, match="32"):
        create_model("vgg19_bn_cifar", in_shape=(1, 8, 8), out_dim=10)
    with pytest.raises(ValueError, match="already registered"):
        register_model("mlp")(lambda **kw: nn.Linear(1, 1))


# ---- plan-time check -------------------------------------------------------------------------

INTENDED = [("mlp", (2,)), ("mlp", (1, 8, 8)), ("cnn_bn", (1, 8, 8)), ("cnn_bn", (3, 32, 32))] + [
    (name, (3, 32, 32)) for name in ("resnet18_cifar", "vgg19_bn_cifar", "vit_small_data")] + [
    (name, (3, 64, 64)) for name in ("resnet18_imagenet", "vgg19_bn_imagenet")]


@pytest.mark.parametrize("name,in_shape", INTENDED)
def test_check_model_accepts_every_model_on_its_intended_inputs(name, in_shape):
    assert check_model(name, in_shape, 10) > 0


def test_every_registered_model_has_an_intended_input():
    assert {name for name, _ in INTENDED} == set(list_models())


REJECTED = [  # (name, in_shape, model_args, what the message must say)
    ("vgg19_bn_cifar", (1, 8, 8), {}, "needs H, W >= 32"),
    ("cnn_bn", (2,), {}, r"needs image inputs \(C, H, W\)"),
    ("resnet18_cifar", (2,), {}, r"needs image inputs \(C, H, W\)"),
    ("mlp", (2,), {"widths": [8]}, r"no argument 'widths'; it accepts: hidden=\(64, 64\), activation='relu'"),
    ("resnet18_cifar", (3, 32, 32), {"pretrained": True}, "no argument 'pretrained'; it accepts: no arguments"),
    ("vit_small_data", (3, 30, 30), {}, "not divisible by patch_size=4"),
    ("vit_small_data", (3, 32, 32), {"patch_size": 5}, "not divisible by patch_size=5"),
    ("vit_small_data", (3, 32, 32), {"image_size": 64}, "image_size=64 but the task's images are 32x32"),
    ("mlp", (2,), {"hidden": "ab"}, "hidden must be a list of positive widths"),
    ("resnet81", (3, 32, 32), {}, "unknown model 'resnet81'; known: cnn_bn"),
    ("vgg19_bn_imagenet", (3, 64, 64), {"pretrained_file": "w.pth"}, "needs pretrained: true"),
]


@pytest.mark.parametrize("name,in_shape,model_args,message", REJECTED)
def test_check_model_rejects_with_one_line(name, in_shape, model_args, message):
    with pytest.raises(ValueError, match=message) as err:
        check_model(name, in_shape, 10, **model_args)
    assert "\n" not in str(err.value)


class _Misfit(nn.Module):
    """A small model whose classifier expects 5 features where its body gives 4: only a forward pass shows it."""

    def __init__(self, in_shape, out_dim):
        super().__init__()
        self.body, self.classifier = nn.Linear(in_shape[0], 4), nn.Linear(5, out_dim)

    def forward_features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.classifier(self.forward_features(x))


def test_check_model_runs_a_small_model_on_the_cpu_and_a_large_one_on_meta(monkeypatch):
    """A small model's forward pass runs on the CPU (built again there), so a plan of small models never
    imports torch._dynamo (the meta device's batch norm does: 1.8 s before the study starts) nor sympy (a
    meta-to-CPU ``to_empty`` does: 0.4 s); a mismatch in the forward pass is still one line; the caller's RNG
    is untouched; a model over CPU_CHECK_PARAMS is never built off the meta device."""
    import subprocess
    import sys
    from raystudy.models import check
    monkeypatch.setitem(registry._MODELS, "misfit", lambda in_shape, out_dim: _Misfit(in_shape, out_dim))
    with pytest.raises(ValueError, match=r"a \(2, \*in_shape\) batch does not go through it: RuntimeError"):
        check_model("misfit", (3,), 10)
    code = ("import sys; from raystudy.models import check_model; "
            "check_model('cnn_bn', (1, 8, 8), 10, width=16); check_model('mlp', (2,), 2); "
            "print('torch._dynamo' in sys.modules, 'sympy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False False"
    built, create = [], check.create_model
    monkeypatch.setattr(check, "create_model",
                        lambda *a, **kw: built.append(torch.get_default_device().type) or create(*a, **kw))
    assert check_model("vgg19_bn_cifar", (3, 32, 32), 10) > check.CPU_CHECK_PARAMS and built == ["meta"]
    state = torch.get_rng_state()
    assert check_model("mlp", (2,), 2) < check.CPU_CHECK_PARAMS and built == ["meta", "meta", "cpu"]
    assert torch.equal(torch.get_rng_state(), state)


def test_check_model_never_downloads(offline_hub):
    # With the hub offline a download would raise; the check builds the architecture only.
    check_model("resnet18_imagenet", (3, 64, 64), 200, pretrained=True)
    check_model("vgg19_bn_imagenet", (3, 64, 64), 200, pretrained=True, pretrained_file="/not/here.safetensors")


class _Broken(nn.Module):
    """Declares 4 features but produces 3 (or returns the wrong output shape)."""

    def __init__(self, out_dim: int, wrong_output: bool) -> None:
        super().__init__()
        self.classifier = nn.Linear(3 if wrong_output else 4, out_dim)
        self.wrong_output = wrong_output

    def forward_features(self, x):
        return x.flatten(1)[:, :3]

    def forward(self, x):
        out = self.classifier(self.forward_features(x))
        return out[:1] if self.wrong_output else out


def test_check_model_catches_forward_and_output_shape_errors(monkeypatch):
    monkeypatch.setitem(registry._MODELS, "broken", lambda *, in_shape, out_dim: _Broken(out_dim, False))
    with pytest.raises(ValueError, match="does not go through it: RuntimeError") as err:
        check_model("broken", (5,), 2)
    assert "\n" not in str(err.value)
    monkeypatch.setitem(registry._MODELS, "broken", lambda *, in_shape, out_dim: _Broken(out_dim, True))
    with pytest.raises(ValueError, match=r"outputs \(1, 2\).*expected \(2, 2\)"):
        check_model("broken", (5,), 2)
