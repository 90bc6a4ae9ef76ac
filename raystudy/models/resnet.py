"""ResNet-18 with the CIFAR stem (3x3 stride-1 first conv, no max-pool), built from timm."""
from __future__ import annotations

from torch import Tensor, nn

from .registry import image_shape, register_model


class CifarResNet(nn.Module):
    """timm's ResNet body (``fc`` removed) followed by ``classifier`` = timm's original ``fc``.

    Holding the Linear once (rather than aliasing ``fc``) keeps state-dict keys unique.
    """

    def __init__(self, body: nn.Module, classifier: nn.Linear) -> None:
        super().__init__()
        self.body = body
        self.classifier = classifier

    def forward_features(self, x: Tensor) -> Tensor:
        """Globally average-pooled features, ``(N, 512)``."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.body(x))


@register_model
def resnet18_cifar(*, in_shape: tuple[int, ...], out_dim: int) -> CifarResNet:
    """timm ``resnet18`` (random init) with the CIFAR stem; ~11.17M parameters for 10 classes."""
    import timm  # lazy: importing timm costs ~1 s, and only image trials need it

    c, h, w = image_shape(in_shape, "resnet18_cifar")
    net = timm.create_model("resnet18", pretrained=False, num_classes=out_dim, in_chans=c)
    net.conv1 = nn.Conv2d(c, 64, kernel_size=3, stride=1, padding=1, bias=False)
    # Same init timm gives its own convs, so the replaced stem is not the odd one out.
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()
    fc = net.fc
    net.fc = nn.Identity()  # timm's forward_head now returns pooled features
    return CifarResNet(net, fc)
