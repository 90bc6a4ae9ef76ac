"""timm networks as raystudy models: a timm body without its classifier, then ``classifier``.

Shared by the timm-backed families (resnet, vgg): building the body, optionally with ImageNet
weights through timm (its Hugging Face hub cache, or a local file), and the wrapper that gives
every such network raystudy's ``classifier`` / ``forward_features`` contract.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn


class TimmNet(nn.Module):
    """``body`` (a timm model built with ``num_classes=0``, so it returns pooled features) followed
    by ``classifier``. Holding the Linear once (rather than aliasing timm's ``fc``) keeps state-dict
    keys unique: ``body.*`` and ``classifier.*``.

    ``pretrained_weights``: ``None`` for a random initialisation, else the timm weights name
    (``"resnet18.tv_in1k"``) or the local file the weights were read from.
    """

    def __init__(self, body: nn.Module, classifier: nn.Linear, pretrained_weights: str | None = None) -> None:
        super().__init__()
        self.body = body
        self.classifier = classifier
        self.pretrained_weights = pretrained_weights

    def forward_features(self, x: Tensor) -> Tensor:
        """The body's pooled (pre-logit) features, ``(N, classifier.in_features)``."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.body(x))


def timm_body(
    model: str,
    arch: str,
    *,
    in_chans: int,
    pretrained: bool,
    pretrained_tag: str,
    pretrained_file: str | Path | None,
    **timm_kwargs: Any,
) -> tuple[nn.Module, str | None]:
    """timm ``arch`` with no classifier (``num_classes=0``): returns ``(body, pretrained_weights)``.

    With ``pretrained``, timm loads ``f"{arch}.{pretrained_tag}"`` from ``pretrained_file`` if given
    (timm's ``model.safetensors`` or the original ``.pth``: timm's key filter maps torchvision's
    names), else from the Hugging Face hub cache (downloading when online). Either failure becomes
    one ``ValueError`` line naming ``model`` and what to do. Without it the body keeps timm's
    random initialisation. ``pretrained_file`` without ``pretrained`` is a ``ValueError``.
    Cost: building the network (~0.3 s for ResNet-18, ~2 s for VGG-19-BN on one CPU core), plus
    reading the weights.
    """
    import timm  # lazy: importing timm costs seconds, and only image trials need it

    if pretrained_file is not None and not pretrained:
        raise ValueError(f"{model}: pretrained_file={str(pretrained_file)!r} needs pretrained: true")
    if not pretrained:
        body = timm.create_model(arch, pretrained=False, num_classes=0, in_chans=in_chans, **timm_kwargs)
        return body, None
    name = f"{arch}.{pretrained_tag}"
    if pretrained_file is not None and not Path(pretrained_file).is_file():
        raise ValueError(f"{model}: pretrained_file {str(pretrained_file)!r} (weights {name!r}) is not a file")
    overlay = {"file": str(pretrained_file)} if pretrained_file is not None else None
    try:
        body = timm.create_model(name, pretrained=True, num_classes=0, in_chans=in_chans,
                                 pretrained_cfg_overlay=overlay, **timm_kwargs)
    except Exception as e:  # noqa: BLE001 - hub, network, file and format errors all end here
        if pretrained_file is not None:
            reason = ": ".join([type(e).__name__, *(str(e).strip().splitlines() or [])[:1]])[:300]
            raise ValueError(f"{model}: cannot load ImageNet weights {name!r} from pretrained_file="
                             f"{str(pretrained_file)!r} ({reason})") from e
        raise ValueError(
            f"{model}: cannot fetch ImageNet weights {name!r} through timm ({type(e).__name__}); "
            f"on a machine without internet pre-download them into the Hugging Face cache "
            f"(HF_HOME; e.g. timm.create_model({name!r}, pretrained=True) once online) "
            f"or pass model_args pretrained_file: PATH"
        ) from e
    return body, str(pretrained_file) if pretrained_file is not None else name
