"""VGG-19 with BatchNorm: the paper's CIFAR variant (16 convs, 5 max-pools, a 512-512 head) and the
ImageNet variant from timm (= torchvision's ``vgg19_bn``), optionally ImageNet-pretrained."""
from __future__ import annotations

from torch import Tensor, nn

from .registry import image_shape, register_model
from .timm_body import TimmNet, timm_body

CFG_E: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                          512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


class VGG(nn.Module):
    """Conv3x3-BN-ReLU stacks with max-pools, global average pool, the authors' head
    ``pre_logits`` = [Dropout] -> Linear(512, 512) -> BatchNorm1d -> ReLU, then ``classifier``.

    At 32x32 the five pools leave 1x1 maps, so the pooling is the identity there and this is the
    authors' network exactly (they flatten the 1x1 map); for 64x64 inputs it averages the 2x2 map.
    Initialisation: PyTorch's defaults for every layer (the authors' code has no initialisation of
    its own, nor do the common CIFAR VGGs it follows): convs and Linears Kaiming-uniform
    U(+-1/sqrt(fan_in)) with U(+-1/sqrt(fan_in)) biases, BatchNorm scale 1 and shift 0.
    """

    def __init__(self, in_chans: int, out_dim: int, cfg: list[int | str], dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_chans
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU()]
                c = int(v)
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        # The authors add their dropout only when it is positive; so do we (no module otherwise).
        drop = [nn.Dropout(dropout)] if dropout > 0 else []
        self.pre_logits = nn.Sequential(*drop, nn.Linear(c, c), nn.BatchNorm1d(c), nn.ReLU())
        self.classifier = nn.Linear(c, out_dim)

    def forward_features(self, x: Tensor) -> Tensor:
        """The head's ReLU output, ``(N, 512)``: what the classifier (and relative flatness) sees."""
        return self.pre_logits(self.features(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.forward_features(x))


def _min_size(in_shape: tuple[int, ...], model: str) -> int:
    c, h, w = image_shape(in_shape, model)
    if min(h, w) < 32:
        raise ValueError(f"{model} has 5 max-pools and needs H, W >= 32, got in_shape={in_shape}")
    return c


@register_model
def vgg19_bn_cifar(*, in_shape: tuple[int, ...], out_dim: int, dropout: float = 0.0) -> VGG:
    """VGG-19-BN as the paper's authors built it for CIFAR; 20,304,202 parameters for 10 classes.

    ``dropout``: probability of the Dropout before the head (the authors' ``--dropout``, default 0).
    Counts 18 weight layers (16 convs, head Linear, classifier) for the Fisher-Rao factor L + 1.
    """
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"vgg19_bn_cifar: dropout must be in [0, 1), got {dropout}")
    return VGG(_min_size(in_shape, "vgg19_bn_cifar"), out_dim, CFG_E, dropout)


@register_model
def vgg19_bn_imagenet(
    *,
    in_shape: tuple[int, ...],
    out_dim: int,
    pretrained: bool = False,
    pretrained_file: str | None = None,
    dropout: float = 0.5,
) -> TimmNet:
    """timm's ``vgg19_bn`` (= torchvision's): the paper's pretrained TinyImageNet VGG (``VGG19BNPT``).

    Body: 16 convs with BatchNorm, 5 max-pools, fc6 (as a 7x7 conv over the map average-pooled up to
    7x7, like torchvision's AdaptiveAvgPool2d(7)) -> ReLU -> Dropout -> fc7 (4096) -> ReLU ->
    Dropout, then ``classifier`` = a new ``nn.Linear(4096, out_dim)`` (PyTorch default init), as the
    authors replaced torchvision's last layer. ``dropout`` = torchvision's 0.5 in both places.
    ``pretrained``: torchvision's ImageNet-1k weights (timm ``vgg19_bn.tv_in1k``), from
    ``pretrained_file`` or the Hugging Face cache; otherwise timm's random initialisation.
    140,400,648 parameters for 200 classes (fc6 alone holds 102.8M).
    """
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"vgg19_bn_imagenet: dropout must be in [0, 1), got {dropout}")
    c = _min_size(in_shape, "vgg19_bn_imagenet")
    body, weights = timm_body("vgg19_bn_imagenet", "vgg19_bn", in_chans=c, pretrained=pretrained,
                              pretrained_tag="tv_in1k", pretrained_file=pretrained_file, drop_rate=dropout)
    return TimmNet(body, nn.Linear(body.head_hidden_size, out_dim), weights)
