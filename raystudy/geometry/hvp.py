"""The Hessian of a model's loss as one linear operator: every curvature estimator multiplies by it.

``HessianOperator`` multiplies H = d²L/dθ² by vectors, where L is the sample-weighted mean loss over
all batches of ``data`` (the contract of ``geometry.data``) with the model in eval mode, and θ the
selected parameters flattened in ``model.named_parameters()`` order. Vectors are rows: ``apply`` takes
probes of shape (k, dim) and runs them as one block, so per-batch work (the forward pass and the first
backward) is shared by the whole block. ``matvec``/``matmat`` offer the usual (dim,) / (dim, k) layout.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from typing import Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from raystudy.geometry.data import Batch, LossFn, as_batches, model_device, n_samples
from raystudy.geometry.hessian_scope import all_eval, select_params
from raystudy.geometry.operator import LinearOperator, as_linear_operator

BACKENDS = ("auto", "rev-rev", "fwd-rev")


def _counter(saved: dict[int, int]):
    """A saved-tensors pack hook recording the bytes of every distinct storage an autograd graph
    keeps alive (how much memory caching that graph holds)."""
    def pack(t: Tensor) -> Tensor:
        try:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):  # e.g. tensor subclasses without storage
            saved[id(t)] = t.numel() * t.element_size()
        return t
    return pack


class HessianOperator:
    """H of the mean loss over ``data`` w.r.t. the selected parameters, as a (dim x dim) operator.

    A ``LinearOperator`` (``geometry.operator``): ``shape`` (dim, dim), ``dtype`` and ``device`` of
    the selected parameters, ``op @ v`` for v (dim,) or a block V (dim, k). H is in loss units per
    parameter unit squared.

    Args:
        model: left untouched: parameters are read, never written; no ``.grad`` is set; the train/eval
            flag of every submodule is restored after each product. H is taken at the parameters
            the model holds now (cached graphs too): build a new operator after it changes.
        loss_fn: ``loss_fn(outputs, targets)`` -> batch-mean loss (scalar).
        data: iterable of (inputs, targets) batches; the loss is weighted by batch size.
        params: see ``select_params``.
        dtype: e.g. ``torch.float64`` for verification: casts a *copy* of the model and the inputs.
        backend: "rev-rev" (double backward), "fwd-rev" (``jvp`` of ``grad``, vmapped over a block),
            or "auto": rev-rev on the CPU (measured on the project's 2-core machine, digits MLP to
            ResNet-18: 1.2-2.7x a gradient, fwd-rev 1.8-6x; ``benchmarks/hessian.py`` prints both),
            elsewhere the faster of the two by ``time_backends`` at construction. If a product fails with one
            backend (an op with no forward-mode derivative, or no double backward) the operator
            switches to the other for good.
        cache_graph: rev-rev keeps each batch's gradient graph and differentiates it again for every
            product, saving the forward and first backward (measured: an MLP's Hv 1.1x a gradient
            instead of 1.8x, ResNet-18's 2.6x instead of 3.5x) at the memory of the graphs.
            None = cache when there is one batch (no extra peak memory) or when the graphs of all
            batches fit in ``graph_memory_bytes``, as measured on the first batch's saved tensors.
            Uncached, a block of probes still shares each batch's forward and first backward.
        max_block: most probes pushed through the model at once (bounds vmap's memory).

    Attributes:
        dim: number of selected parameter scalars; ``loss``: L at the current parameters (float);
        ``n_hvp``: products spent so far; ``backend``: the one in use; ``max_block``.

    Raises:
        ValueError: an unknown backend or parameter selection, empty data, or a non-finite loss.

    Cost: construction takes one forward pass over the data (the loss is checked to be finite), plus the
    timing products of "auto" off the CPU (4 x 4 Hv per backend, ``time_backends``). Each probe
    then costs one Hessian-vector product (rev-rev ~1.2-2.7x a gradient on the CPU), counted in
    ``n_hvp``. Memory: the data on the device, a block of ``max_block`` probes through the model,
    and the cached gradient graphs when ``cache_graph``. Products are deterministic on the CPU:
    same probes, same numbers.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, data: Iterable[Batch],
                 params: str | Sequence[str] | None = None, dtype: torch.dtype | None = None,
                 backend: str = "auto", cache_graph: bool | None = None, max_block: int = 16,
                 graph_memory_bytes: int = 2**30):
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r}: expected one of {BACKENDS}")
        names = select_params(model, params)
        if dtype is not None and any(p.dtype != dtype for p in model.parameters()):
            model = copy.deepcopy(model).to(dtype)  # the caller's model stays as it was
        self.model, self.loss_fn, self.names = model, loss_fn, names
        self.device = model_device(model)
        self.dtype = dict(model.named_parameters())[names[0]].dtype
        cast = lambda t: t.to(self.device, self.dtype if t.is_floating_point() else t.dtype)
        self.batches = [(cast(x), cast(y)) for x, y in as_batches(data)]
        total = n_samples(self.batches)
        self.weights = [len(x) / total for x, _ in self.batches]
        all_params = {n: p.detach() for n, p in model.named_parameters()}
        self.theta = {n: all_params.pop(n) for n in names}
        self.frozen = all_params  # other parameters enter as constants
        self.shapes = [t.shape for t in self.theta.values()]
        self.numels = [t.numel() for t in self.theta.values()]
        self.dim = sum(self.numels)
        self.backend = "rev-rev" if backend == "auto" else backend
        self.max_block = max_block
        self.n_hvp = 0
        self.cache_graph, self.graph_memory_bytes = cache_graph, graph_memory_bytes
        self._graphs: list[tuple[dict[str, Tensor], list[Tensor]]] | None = None
        with all_eval(self.model), torch.no_grad():
            self.loss = float(sum(w * self._batch_loss(self.theta, b)
                                  for w, b in zip(self.weights, self.batches)))
        if not math.isfinite(self.loss):
            raise ValueError(f"the loss is {self.loss} at these parameters: its Hessian is undefined")
        if backend == "auto" and self.device.type != "cpu":
            times = self.time_backends()
            self.backend = min(times, key=times.get)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.dim, self.dim)

    def _batch_loss(self, theta: dict[str, Tensor], batch: Batch) -> Tensor:
        x, y = batch
        out = torch.func.functional_call(self.model, {**self.frozen, **theta}, (x,))
        return self.loss_fn(out, y)

    def _split(self, X: Tensor) -> list[Tensor]:
        """(k, dim) rows -> one (k, *shape) tensor per parameter (views)."""
        return [c.view(len(X), *s) for c, s in zip(X.split(self.numels, dim=1), self.shapes)]

    def apply(self, X: Tensor) -> Tensor:
        """H X for a block of probes, one row per probe (the estimators' native layout).

        Args:
            X: (k, dim) probes, any device/dtype (cast to the operator's).

        Returns:
            (k, dim) tensor, row i = H X[i], on the operator's device and dtype.

        Cost: k Hv, run ``max_block`` rows at a time; counted in ``n_hvp``.
        """
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise ValueError(f"probes must have shape (k, {self.dim}), got {tuple(X.shape)}")
        X = X.to(self.device, self.dtype).contiguous()
        outs = [self._apply_block(X[i:i + self.max_block]) for i in range(0, len(X), self.max_block)]
        self.n_hvp += len(X)
        return torch.cat(outs)

    def matvec(self, v: Tensor) -> Tensor:
        """H v.

        Args:
            v: (dim,) vector.

        Returns:
            (dim,) tensor on the operator's device and dtype. Cost: 1 Hv.
        """
        return self.apply(v.reshape(1, -1))[0]

    def matmat(self, V: Tensor) -> Tensor:
        """H V, the k columns as one block.

        Args:
            V: (dim, k) columns.

        Returns:
            (dim, k) tensor on the operator's device and dtype. Cost: k Hv.
        """
        return self.apply(V.T).T

    def __matmul__(self, v: Tensor) -> Tensor:
        """``matvec`` for v (dim,), ``matmat`` for v (dim, k). Cost: 1 or k Hv."""
        return self.matvec(v) if v.ndim == 1 else self.matmat(v)

    def _apply_block(self, X: Tensor) -> Tensor:
        with all_eval(self.model):
            try:
                return self._product(self.backend, X)
            except (RuntimeError, NotImplementedError) as err:
                # e.g. an op with no forward-mode derivative (fwd-rev) or no double backward (rev-rev)
                other = "rev-rev" if self.backend == "fwd-rev" else "fwd-rev"
                try:
                    out = self._product(other, X)
                except (RuntimeError, NotImplementedError):
                    raise err from None
                self.backend = other
                return out

    def _product(self, backend: str, X: Tensor) -> Tensor:
        return self._fwd_rev(X) if backend == "fwd-rev" else self._rev_rev(X)

    def time_backends(self, k: int = 4) -> dict[str, float]:
        """Seconds per Hv of each backend on a block of k probes, timed after a warm-up block.

        Args:
            k: probes per timed block (drawn from a fixed seed; the global RNG is untouched).

        Returns:
            backend name -> seconds per Hv (inf where the backend fails).

        Cost: 4k Hv (a warm-up and a timed block per backend), counted in ``n_hvp``; the backend
        in use is unchanged.
        """
        X = torch.randn(k, self.dim, generator=torch.Generator().manual_seed(0), dtype=self.dtype)
        X, times = X.to(self.device), {}
        for backend in BACKENDS[1:]:
            try:
                with all_eval(self.model):
                    for _ in range(2):  # the first call warms up (allocator, kernels, vmap)
                        self._sync()
                        start = time.perf_counter()
                        self._product(backend, X)
                        self._sync()
                times[backend] = (time.perf_counter() - start) / k
            except (RuntimeError, NotImplementedError):
                times[backend] = math.inf
            self.n_hvp += 2 * k
        return times

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _fwd_rev(self, X: Tensor) -> Tensor:
        # jvp of grad: the primal forward/backward runs once per batch, vmap batches the tangents.
        vs = dict(zip(self.names, self._split(X)))
        total = torch.zeros_like(X)
        for w, batch in zip(self.weights, self.batches):
            grad_fn = torch.func.grad(lambda th: self._batch_loss(th, batch) * w)
            hv_fn = lambda v: torch.func.jvp(grad_fn, (self.theta,), (v,))[1]
            hv = torch.func.vmap(hv_fn)(vs)
            total += torch.cat([hv[n].reshape(len(X), -1) for n in self.names], dim=1)
        return total

    def _gradient_graphs(self) -> Iterator[tuple[dict[str, Tensor], list[Tensor]]]:
        """Per batch: leaves θ and the weighted gradient g(θ) built with create_graph."""
        if self._graphs is not None:
            yield from self._graphs
            return
        graphs = []
        for w, batch in zip(self.weights, self.batches):
            theta = {n: t.detach().requires_grad_() for n, t in self.theta.items()}
            saved: dict[int, int] = {}
            measure = (torch.autograd.graph.saved_tensors_hooks(_counter(saved), lambda t: t)
                       if self.cache_graph is None else contextlib.nullcontext())
            with torch.enable_grad(), measure:
                loss = self._batch_loss(theta, batch) * w
                g = torch.autograd.grad(loss, list(theta.values()), create_graph=True)
            if self.cache_graph is None:  # decided on the first batch, for all of them
                graph_bytes = sum(saved.values()) * len(self.batches)
                self.cache_graph = len(self.batches) == 1 or graph_bytes <= self.graph_memory_bytes
            if self.cache_graph:
                graphs.append((theta, list(g)))
            yield theta, list(g)
        if self.cache_graph:
            self._graphs = graphs

    def _rev_rev(self, X: Tensor) -> Tensor:
        # H x = d(g . x)/dθ. The first backward is shared by the block (and by all calls if cached).
        vs = self._split(X)
        total = torch.zeros_like(X)
        for theta, g in self._gradient_graphs():
            live = [i for i, gi in enumerate(g) if gi.requires_grad]  # g_i constant in θ: H row = 0
            if not live:
                continue
            inputs = list(theta.values())
            for r in range(len(X)):
                hv = torch.autograd.grad([g[i] for i in live], inputs,
                                         grad_outputs=[vs[i][r] for i in live],
                                         retain_graph=True, materialize_grads=True)
                total[r] += torch.cat([h.reshape(-1) for h in hv])
        return total


def as_operator(model_or_op: nn.Module | LinearOperator, loss_fn: LossFn | None,
                data: Iterable[Batch] | None, **op_kwargs) -> LinearOperator:
    """The operator the estimators' model-level entry points work on.

    Args:
        model_or_op: a model, or a prebuilt operator (any ``LinearOperator``: a
            ``HessianOperator``, a ``DenseOperator``, a square torch matrix; a numpy matrix
            becomes a ``DenseOperator``).
        loss_fn, data: required with a model, see ``HessianOperator``.
        **op_kwargs: ``HessianOperator`` options; only with a model.

    Returns:
        The prebuilt operator as is, else ``HessianOperator(model, loss_fn, data, **op_kwargs)``.

    Raises:
        ValueError: options with a prebuilt operator, a model without loss_fn/data, or
            something that is not an operator.

    Cost: nothing for a prebuilt operator, else one forward pass over ``data``.
    """
    if not isinstance(model_or_op, nn.Module):
        if op_kwargs:
            raise ValueError(f"operator options {sorted(op_kwargs)} given with a prebuilt operator")
        return as_linear_operator(model_or_op)
    if loss_fn is None or data is None:
        raise ValueError("loss_fn and data are required unless a prebuilt operator is passed")
    return HessianOperator(model_or_op, loss_fn, data, **op_kwargs)
