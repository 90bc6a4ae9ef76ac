"""Model registry: ``create_model(name, in_shape=..., out_dim=..., **kwargs)``, ``list_models()``,
``check_model(...)`` (does a model fit a task? checked at plan time on the meta device).

Importing this package registers every family (mlp, cnn, resnet, vgg, vit). Every model exposes
``classifier`` (its final ``nn.Linear``), ``forward_features(x)`` (the classifier's input) and
``pretrained_weights`` (``None`` unless it started from pretrained weights).
"""
from __future__ import annotations

from . import cnn, mlp, resnet, vgg, vit  # noqa: F401  (imports register the builders)
from .check import check_model
from .registry import create_model, list_models, model_kwargs, register_model

__all__ = ["check_model", "create_model", "list_models", "model_kwargs", "register_model"]
