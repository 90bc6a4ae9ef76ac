"""Model registry: ``create_model(name, in_shape=..., out_dim=..., **kwargs)``, ``list_models()``.

Importing this package registers every family (mlp, cnn, resnet, vgg). Every model exposes
``classifier`` (its final ``nn.Linear``) and ``forward_features(x)`` (the classifier's input).
"""
from __future__ import annotations

from . import cnn, mlp, resnet, vgg  # noqa: F401  (imports register the builders)
from .registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
