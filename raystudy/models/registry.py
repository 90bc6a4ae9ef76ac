"""A timm-style model registry: ``@register_model`` builders, ``create_model(name, ...)``.

Every builder takes keyword-only ``in_shape`` (shape of one sample) and ``out_dim`` (classes, or 1
for regression) plus its own keyword arguments, and returns a module with:
- ``classifier``: its final ``nn.Linear`` (``model(x) == model.classifier(model.forward_features(x))``);
- ``forward_features(x)``: the ``(N, F)`` features the classifier reads;
- ``pretrained_weights``: ``None`` for a random initialisation, else where the weights came from.
Weights are drawn from torch's global RNG, so ``torch.manual_seed(s)`` before ``create_model``
fixes them (the trainer seeds by (task, model, seed) so every regime starts from the same weights).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, TypeVar

from torch import nn

Builder = Callable[..., nn.Module]
F = TypeVar("F", bound=Builder)

_MODELS: dict[str, Builder] = {}


def register_model(fn_or_name: F | str) -> F | Callable[[F], F]:
    """Register a builder under its function name (``@register_model``) or a given name
    (``@register_model("name")``). Returns the builder unchanged. Duplicate names raise ``ValueError``.
    """
    def add(fn: F, name: str) -> F:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = fn
        return fn

    if isinstance(fn_or_name, str):
        return lambda fn: add(fn, fn_or_name)
    return add(fn_or_name, fn_or_name.__name__)


def list_models() -> list[str]:
    """Sorted names of every registered model."""
    return sorted(_MODELS)


def create_model(name: str, *, in_shape: tuple[int, ...], out_dim: int, **kwargs: Any) -> nn.Module:
    """Build model ``name`` for inputs of per-sample shape ``in_shape`` and ``out_dim`` outputs.

    Unknown name -> ``KeyError`` listing the known ones; an unknown keyword -> ``TypeError``;
    a bad value (e.g. an unknown activation, an input too small) -> ``ValueError``.
    """
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    if out_dim < 1:
        raise ValueError(f"out_dim must be >= 1, got {out_dim}")
    model = _MODELS[name](in_shape=tuple(int(s) for s in in_shape), out_dim=int(out_dim), **kwargs)
    if not hasattr(model, "pretrained_weights"):
        model.pretrained_weights = None
    return model


def model_kwargs(name: str) -> dict[str, Any]:
    """The keyword arguments model ``name`` takes besides ``in_shape``/``out_dim``, with their defaults
    (``inspect.Parameter.empty`` for a required one). Unknown name -> ``KeyError``."""
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    params = inspect.signature(_MODELS[name]).parameters.values()
    return {p.name: p.default for p in params if p.name not in ("in_shape", "out_dim")}


def image_shape(in_shape: tuple[int, ...], model: str) -> tuple[int, int, int]:
    """``in_shape`` as ``(C, H, W)``; ``ValueError`` naming ``model`` if it is not an image shape."""
    if len(in_shape) != 3:
        raise ValueError(f"{model} needs image inputs (C, H, W), got in_shape={in_shape}")
    c, h, w = in_shape
    return c, h, w


def reset_to_torch_defaults(model: nn.Module) -> nn.Module:
    """Re-initialise every submodule with PyTorch's own ``reset_parameters`` (convs and Linears:
    Kaiming-uniform with a=sqrt(5), i.e. U(+-1/sqrt(fan_in)); BatchNorm/LayerNorm: scale 1, shift 0,
    running statistics reset). This is how the paper's authors initialised their CIFAR models: their
    code has no initialisation of its own. Draws from the global RNG; returns ``model``."""
    for m in model.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()
    return model
