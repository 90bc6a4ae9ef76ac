"""A small CNN with BatchNorm for small images (8x8 digits up to 32x32 CIFAR)."""
from __future__ import annotations

from torch import Tensor, nn

from .registry import image_shape, register_model


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    # No conv bias: the BatchNorm shift that follows makes it redundant.
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class SmallCNN(nn.Module):
    """conv(C,w)-BN-ReLU -> conv(w,2w)-BN-ReLU -> maxpool 2 -> conv(2w,2w)-BN-ReLU -> global avg pool
    -> ``classifier`` Linear(2w, out_dim). Global pooling makes it size-agnostic (H, W >= 2)."""

    def __init__(self, in_chans: int, out_dim: int, width: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_relu(in_chans, width),
            *_conv_bn_relu(width, 2 * width),
            nn.MaxPool2d(2),
            *_conv_bn_relu(2 * width, 2 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(2 * width, out_dim)

    def forward_features(self, x: Tensor) -> Tensor:
        """Globally pooled features, ``(N, 2 * width)``."""
        return self.features(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


@register_model
def cnn_bn(*, in_shape: tuple[int, ...], out_dim: int, width: int = 32) -> SmallCNN:
    """Small BatchNorm CNN; ``width`` = channels of the first conv (later ones use 2*width)."""
    c, h, w = image_shape(in_shape, "cnn_bn")
    if min(h, w) < 2 or width < 1:
        raise ValueError(f"cnn_bn needs H, W >= 2 and width >= 1, got in_shape={in_shape}, width={width}")
    return SmallCNN(c, out_dim, width)
