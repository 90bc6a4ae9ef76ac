"""ResNet-18 from timm: the CIFAR variant (3x3 stride-1 stem, no max-pool) as the paper's authors
built it, and the ImageNet variant (7x7 stride-2 stem + max-pool), optionally ImageNet-pretrained."""
from __future__ import annotations

from torch import nn

from .registry import image_shape, register_model, reset_to_torch_defaults
from .timm_body import TimmNet, timm_body


@register_model
def resnet18_cifar(*, in_shape: tuple[int, ...], out_dim: int) -> TimmNet:
    """ResNet-18 with the CIFAR stem; 11,173,962 parameters for 10 classes.

    timm's ``resnet18`` body (BasicBlocks [2, 2, 2, 2], widths 64-512, global average pool) with a
    3x3 stride-1 ``conv1`` and no max-pool, initialised as the authors' ResNet-18 (kuangliu's CIFAR
    ResNet, no initialisation code of its own) is: PyTorch's defaults for every layer, so every
    BatchNorm starts with scale gamma = 1 and shift 0, including the last BatchNorm of each block
    (timm zero-initialises that one; a different starting point and a different early landscape),
    and convs/Linear are Kaiming-uniform U(+-1/sqrt(fan_in)) rather than timm's Kaiming-normal
    fan-out (whose ~2.4x larger conv weights change how far a fixed-radius perturbation reaches).
    """
    c, _, _ = image_shape(in_shape, "resnet18_cifar")
    body, _ = timm_body("resnet18_cifar", "resnet18", in_chans=c, pretrained=False, pretrained_tag="",
                        pretrained_file=None, zero_init_last=False)
    body.conv1 = nn.Conv2d(c, 64, kernel_size=3, stride=1, padding=1, bias=False)
    body.maxpool = nn.Identity()
    return reset_to_torch_defaults(TimmNet(body, nn.Linear(body.head_hidden_size, out_dim)))


@register_model
def resnet18_imagenet(
    *,
    in_shape: tuple[int, ...],
    out_dim: int,
    pretrained: bool = False,
    pretrained_file: str | None = None,
) -> TimmNet:
    """ResNet-18 with timm's (= torchvision's) ImageNet stem: the paper's pretrained TinyImageNet model.

    ``pretrained``: the torchvision ImageNet-1k weights the authors used (timm ``resnet18.tv_in1k``),
    from ``pretrained_file`` (a local copy) or the Hugging Face cache; the classifier is then a new
    ``nn.Linear(512, out_dim)`` with PyTorch's default initialisation, like the authors' ``ResNet18PT``.
    Random initialisation otherwise: timm's (Kaiming-normal fan-out convs) with every BatchNorm scale 1,
    as torchvision. 11,279,112 parameters for 200 classes.
    """
    c, _, _ = image_shape(in_shape, "resnet18_imagenet")
    body, weights = timm_body("resnet18_imagenet", "resnet18", in_chans=c, pretrained=pretrained,
                              pretrained_tag="tv_in1k", pretrained_file=pretrained_file, zero_init_last=False)
    return TimmNet(body, nn.Linear(body.head_hidden_size, out_dim), weights)

