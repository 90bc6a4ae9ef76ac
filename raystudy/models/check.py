"""Plan-time check that a model fits a task: build it on the meta device and run one forward pass."""
from __future__ import annotations

import inspect
from typing import Any, Sequence

import torch
from torch import nn

from .registry import create_model, list_models, model_kwargs


CPU_CHECK_PARAMS = 2_000_000  # ~8 MB of float32 weights, a forward pass of 2 samples in milliseconds


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def check_model(name: str, in_shape: Sequence[int], out_dim: int, **model_args: Any) -> int:
    """Raise a one-line ``ValueError`` unless model ``name`` fits a task with per-sample input shape
    ``in_shape`` and ``out_dim`` outputs; if it does, return its trainable parameter count.

    Checked: the name is registered; every key of ``model_args`` is one of the builder's keyword
    arguments (else the message names it and lists the accepted ones with their defaults); the
    builder accepts the values; ``classifier`` is an ``nn.Linear`` with ``out_dim`` outputs; a
    ``(2, *in_shape)`` batch goes through ``forward_features`` to ``(2, classifier.in_features)`` and
    through the model to ``(2, out_dim)`` (train mode, as in training).

    The model is built on the ``meta`` device: no memory, no weight initialisation, no download.
    ``pretrained: true`` checks the architecture only (``pretrained_file`` is not read; it may live
    on the workers only). The forward pass runs on the meta device too, except for a small model
    (at most ``CPU_CHECK_PARAMS`` parameters), built again on the CPU for it: the
    meta device's batch-norm kernels import ``torch._dynamo`` on first use, 1.8 s that a study of small
    models would otherwise wait before it starts. Cost: ~0.07 s for VGG-19 or the ViT on one idle CPU
    core (0.2 s under load), plus importing timm once (seconds) for the timm-backed models; a small
    model's CPU pass, ~0.01-0.4 s (the first convolution of a process sets oneDNN up).
    """
    where = f"model {name!r} (in_shape={tuple(in_shape)}, out_dim={out_dim})"
    try:
        accepted = model_kwargs(name)
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(list_models())}") from None
    unknown = [k for k in model_args if k not in accepted]
    if unknown:
        listed = ", ".join(k if v is inspect.Parameter.empty else f"{k}={v!r}" for k, v in accepted.items())
        raise ValueError(f"model {name!r} has no argument {', '.join(map(repr, unknown))}; "
                         f"it accepts: {listed or 'no arguments'}")
    args = dict(model_args)
    if args.get("pretrained"):  # the architecture only: never download at plan time
        args["pretrained"] = False
        args.pop("pretrained_file", None)
    try:
        shape = tuple(int(s) for s in in_shape)
        with torch.device("meta"):
            model = create_model(name, in_shape=shape, out_dim=out_dim, **args)
    except Exception as e:  # noqa: BLE001 - any failure to build is a configuration error here
        raise ValueError(f"{where}: {_first_line(e)}") from e
    head = getattr(model, "classifier", None)
    if not isinstance(head, nn.Linear) or head.out_features != out_dim:
        raise ValueError(f"{where}: its classifier must be an nn.Linear with {out_dim} outputs, got {head!r}")
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    device = "cpu" if n_params <= CPU_CHECK_PARAMS else "meta"
    if device == "cpu":
        # Built again on the CPU, initialised (milliseconds at this size) under a forked RNG, so the caller's
        # random state is untouched. Not ``to_empty``: its meta-to-CPU copy imports sympy, 0.4 s at start-up.
        try:
            with torch.random.fork_rng(devices=[]), torch.device("cpu"):
                model = create_model(name, in_shape=shape, out_dim=out_dim, **args)
        except Exception as e:  # noqa: BLE001 - as for the meta build: one line, never a traceback
            raise ValueError(f"{where}: {_first_line(e)}") from e
    x = torch.zeros(2, *shape, device=device)
    try:
        with torch.no_grad():
            feats, out = model.forward_features(x), model(x)
    except Exception as e:  # noqa: BLE001 - shape errors surface as RuntimeError/ValueError/IndexError
        raise ValueError(f"{where}: a (2, *in_shape) batch does not go through it: "
                         f"{type(e).__name__}: {_first_line(e)}") from e
    if tuple(out.shape) != (2, out_dim) or tuple(feats.shape) != (2, head.in_features):
        raise ValueError(f"{where}: a (2, *in_shape) batch gives outputs {tuple(out.shape)} and features "
                         f"{tuple(feats.shape)}; expected (2, {out_dim}) and (2, {head.in_features})")
    return n_params
