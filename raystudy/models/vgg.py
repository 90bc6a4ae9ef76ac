"""VGG-19 with BatchNorm, CIFAR variant: 16 convs (cfg E), 5 max-pools, one Linear(512, out_dim)."""
from __future__ import annotations

from torch import Tensor, nn

from .registry import image_shape, register_model

CFG_E: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                          512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


class VGG(nn.Module):
    """Conv3x3-BN-ReLU stacks with max-pools, adaptive average pool to 1x1, ``classifier``.

    At 32x32 the five pools leave 1x1 maps, so the pooling is the identity there (the usual CIFAR
    variant); for 64x64 inputs it averages the 2x2 map.
    """

    def __init__(self, in_chans: int, out_dim: int, cfg: list[int | str]) -> None:
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
        self.classifier = nn.Linear(c, out_dim)
        # torchvision's VGG initialisation.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled features, ``(N, 512)``."""
        return self.features(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


@register_model
def vgg19_bn_cifar(*, in_shape: tuple[int, ...], out_dim: int) -> VGG:
    """VGG-19-BN for 32x32 (or larger) images; ~20.04M parameters for 10 classes."""
    c, h, w = image_shape(in_shape, "vgg19_bn_cifar")
    if min(h, w) < 32:
        raise ValueError(f"vgg19_bn_cifar has 5 max-pools and needs H, W >= 32, got in_shape={in_shape}")
    return VGG(c, out_dim, CFG_E)
