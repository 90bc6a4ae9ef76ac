"""Fully connected networks (families A and B, and an image baseline): inputs are flattened."""
from __future__ import annotations

import math

from torch import Tensor, nn

from .registry import register_model

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


class MLP(nn.Module):
    """Flatten -> [Linear -> activation] per hidden width -> ``classifier`` Linear."""

    def __init__(self, in_features: int, hidden: list[int], out_dim: int, activation: str) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; known: {', '.join(_ACTIVATIONS)}")
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), _ACTIVATIONS[activation]()]
            width = h
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, out_dim)

    def forward_features(self, x: Tensor) -> Tensor:
        """Last hidden activations, ``(N, hidden[-1])`` (the flattened input if no hidden layer)."""
        return self.features(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


@register_model
def mlp(
    *,
    in_shape: tuple[int, ...],
    out_dim: int,
    hidden: list[int] | tuple[int, ...] = (64, 64),
    activation: str = "relu",
) -> MLP:
    """MLP on flattened inputs; the protocol's 2->64->64->1 (family A) and 2->100->100->2 (B)."""
    try:
        widths = [int(h) for h in hidden] if not isinstance(hidden, str) else None
    except (TypeError, ValueError):
        widths = None
    if widths is None or any(h < 1 for h in widths):
        raise ValueError(f"mlp: hidden must be a list of positive widths, got {hidden!r}")
    return MLP(math.prod(in_shape), widths, out_dim, activation)
