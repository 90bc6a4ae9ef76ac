"""Complexity of the learned function, measured on data: input-gradient norm and linear-region density.

The study's thesis is that the complexity of the learned function governs the geometry of the
minimum; these two numbers measure that complexity directly. Both take ``data`` as an iterable of
``(inputs, targets)`` batches (targets unused), run the model in eval mode (BatchNorm uses its
running statistics, so samples do not interact) and leave the model and the global RNG as they
were. Inputs are in the model's own input units (already normalised, as the model sees them).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor, nn

from raystudy.geometry.data import Batch, as_batches, eval_mode


def _floating(x: Tensor) -> Tensor:
    if not x.is_floating_point():
        raise ValueError(f"inputs must be floating point (the model's input units), got {x.dtype}")
    return x


def _stats(values: Tensor) -> tuple[float, float, float]:
    """(mean, population std, standard error = ddof-1 std / sqrt(n), NaN for one value)."""
    v = values.double()
    stderr = float(v.std(correction=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan
    return float(v.mean()), float(v.std(correction=0)), stderr


@dataclass(frozen=True)
class InputGradientNorm:
    """Per-sample ||J(x)||_F over the data: ``mean``, ``std`` (population), ``stderr``, ``max``, in
    output units per input unit. J is the (C x D) Jacobian of the model's flattened outputs (C
    logits, or 1 for scalar regression, where ||J||_F is the gradient's L2 norm) with respect to the
    flattened input (D). ``n_backward``: backward passes run (C per batch)."""

    mean: float
    std: float
    stderr: float
    max: float
    n_samples: int
    n_outputs: int
    n_backward: int


def input_gradient_norm(model: nn.Module, data: Iterable[Batch]) -> InputGradientNorm:
    """E_x ||d f(x) / dx||_F over every sample of ``data``.

    A loop over output coordinates rather than ``vmap(jacrev)``: the same arithmetic, one batch's
    graph in memory, and any model runs.

    Args:
        model: the network, run in eval mode (restored after), never modified.
        data: iterable of ``(inputs, targets)`` batches; floating-point inputs (n, ...) in the
            model's input units; targets unused.

    Returns:
        :class:`InputGradientNorm` in output units per input unit.

    Raises:
        ValueError: empty data or non-float inputs.

    Cost: per batch one forward pass and C backward passes (C outputs), each giving row c of
    every sample's Jacobian at once (eval mode makes samples independent); memory: one batch's
    autograd graph.
    """
    norms, n_outputs, n_backward = [], None, 0
    with eval_mode(model), torch.enable_grad():
        for x, _ in as_batches(data):
            x = _floating(x).detach().clone().requires_grad_(True)
            out = model(x).reshape(len(x), -1)
            n_outputs = out.shape[1]
            squared = torch.zeros(len(x), dtype=torch.float64, device=x.device)
            for c in range(n_outputs):
                (row,) = torch.autograd.grad(out[:, c].sum(), x, retain_graph=c < n_outputs - 1)
                squared += row.reshape(len(x), -1).double().pow(2).sum(1)
            norms.append(squared.sqrt().cpu())
            n_backward += n_outputs
    v = torch.cat(norms)
    mean, std, stderr = _stats(v)
    return InputGradientNorm(mean, std, stderr, float(v.max()), len(v), n_outputs, n_backward)


def _relu_patterns(model: nn.Module, x: Tensor, chunk_size: int) -> Tensor:
    """On/off state of every ReLU unit at each input: bool (n, n_units), read by forward hooks on
    the ``nn.ReLU`` modules (a module called twice contributes both calls, in call order)."""
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    if not relus:
        raise ValueError(f"{type(model).__name__} has no nn.ReLU module: linear regions are defined for ReLU networks")
    seen: list[Tensor] = []
    hooks = [r.register_forward_hook(lambda mod, inp, out: seen.append((out > 0).reshape(len(out), -1)))
             for r in relus]
    rows = []
    try:
        with torch.no_grad():
            for part in x.split(chunk_size):
                seen.clear()
                model(part)
                if not seen:
                    raise ValueError(f"no nn.ReLU module of {type(model).__name__} ran in its forward pass")
                rows.append(torch.cat(seen, dim=1))
    finally:
        for h in hooks:
            h.remove()
    return torch.cat(rows)


def _segment_patterns(model, point: Tensor, direction: Tensor, length: float, n_points: int, chunk_size: int):
    t = torch.linspace(-length / 2, length / 2, n_points, dtype=torch.float64, device=point.device)
    shape = (n_points,) + (1,) * point.dim()
    x = (point.double() + t.view(shape) * direction.double()).to(_floating(point).dtype)
    with eval_mode(model):
        return _relu_patterns(model, x, chunk_size)


def pattern_changes(
    model: nn.Module, point: Tensor, direction: Tensor, length: float, n_points: int, chunk_size: int = 1024
) -> int:
    """Activation-pattern changes along the segment ``point + t * direction``, t in [-length/2,
    length/2], sampled at ``n_points`` evenly spaced t.

    Each change means at least one kink between the pair, so this is a lower bound on the kinks
    crossed, exact when consecutive kinks are more than one spacing (length / (n_points-1)) apart.

    Args:
        model: a ReLU network (``nn.ReLU`` modules), run in eval mode (restored after).
        point: one sample, no batch dimension, floating point, input units.
        direction: same shape as ``point``, used as given (normally unit norm).
        length: segment length in input units (times ||direction||).
        n_points: samples along the segment (>= 2).
        chunk_size: samples per forward pass.

    Returns:
        The number of consecutive pairs whose ReLU pattern differs (an int).

    Raises:
        ValueError: a model without ``nn.ReLU`` modules (or none that ran), non-float inputs.

    Cost: ``n_points`` forward samples, run ``chunk_size`` at a time, no gradients; memory:
    n_points x n_units bools.
    """
    patterns = _segment_patterns(model, point, direction, length, n_points, chunk_size)
    return int((patterns[1:] != patterns[:-1]).any(dim=1).sum())


@dataclass(frozen=True)
class LinearRegionDensity:
    """Activation-pattern changes per unit input length along random lines through data points.

    ``mean``/``std``/``stderr``: over lines (population std; stderr = ddof-1 std / sqrt(n_lines)),
    in changes per input unit. ``counts``: changes on each line. ``resolution``: sample spacing
    length / (n_points - 1), in input units. ``n_units``: ReLU units read per input."""

    mean: float
    std: float
    stderr: float
    counts: tuple[int, ...]
    n_lines: int
    n_points: int
    length: float
    resolution: float
    n_units: int
    seed: int


def linear_region_density(
    model: nn.Module,
    data: Iterable[Batch],
    n_lines: int = 100,
    n_points: int = 1025,
    length: float = 1.0,
    seed: int = 0,
    chunk_size: int = 1024,
) -> LinearRegionDensity:
    """Density of linear regions of a ReLU network around the data, per unit input length.

    Line k: anchor p_k = a sample of ``data`` (drawn without replacement when ``n_lines`` <= the
    sample count, else with), direction u_k uniform on the unit sphere of the input space; its
    segment ``p_k + t u_k``, |t| <= length/2, is sampled at ``n_points`` points and scored by
    :func:`pattern_changes`; density_k = changes / length. Kinks closer than the resolution
    length / (n_points - 1) merge (undercount): the defaults (1,025 points on a unit segment,
    resolution 2^-10 input units) resolve kinks ~1e-3 apart. Only ReLU units count; max-pool
    switches do not. Anchors and directions come from ``torch.Generator().manual_seed(seed)`` on
    the CPU (global RNG untouched).

    Args:
        model: a ReLU network, run in eval mode (restored after), never modified.
        data: iterable of ``(inputs, targets)`` batches; floating-point inputs; targets unused.
        n_lines: random lines (>= 1).
        n_points: samples per line (>= 2).
        length: segment length in input units (> 0).
        seed: seeds the CPU generator of anchors and directions.
        chunk_size: samples per forward pass.

    Returns:
        :class:`LinearRegionDensity`, mean/std/stderr in pattern changes per input unit.

    Raises:
        ValueError: bad counts or length, a model without ``nn.ReLU`` modules, non-float inputs.

    Cost: ``n_lines * n_points`` forward samples, no gradients.
    """
    if n_lines < 1 or n_points < 2 or not length > 0:
        raise ValueError(f"need n_lines >= 1, n_points >= 2, length > 0; got {n_lines}, {n_points}, {length}")
    batches = as_batches(data)
    sizes = [len(x) for x, _ in batches]
    total, gen = sum(sizes), torch.Generator(device="cpu").manual_seed(seed)
    picks = torch.randperm(total, generator=gen)[:n_lines] if n_lines <= total else torch.randint(
        total, (n_lines,), generator=gen)
    offsets = torch.tensor([0] + sizes).cumsum(0)
    counts, n_units = [], None
    for i in picks.tolist():
        b = int(torch.searchsorted(offsets, i, right=True)) - 1
        point = _floating(batches[b][0][i - offsets[b]])
        direction = torch.randn(point.numel(), generator=gen, dtype=torch.float64)
        direction = (direction / direction.norm()).view(point.shape).to(point.device)
        patterns = _segment_patterns(model, point, direction, length, n_points, chunk_size)
        counts.append(int((patterns[1:] != patterns[:-1]).any(dim=1).sum()))
        n_units = patterns.shape[1]
    mean, std, stderr = _stats(torch.tensor(counts, dtype=torch.float64) / length)
    return LinearRegionDensity(mean, std, stderr, tuple(counts), n_lines, n_points, float(length),
                               length / (n_points - 1), n_units, seed)
