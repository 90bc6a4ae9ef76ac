"""Sharpness-Aware Minimisation (Foret et al., ICLR 2021) around any torch optimiser.

One SAM step costs two forward and two backward passes: the gradient g at w gives the ascent
direction e = rho * g / ||g||; the gradient at w + e drives the base optimiser's step from w.
BatchNorm running statistics are frozen during the perturbed pass (the authors' code let the
perturbed pass update them: one of the defects docs/PROTOCOL.md lists).

Under data-parallel training both passes run through the DDP-wrapped forward (the closure), so each
backward all-reduces the gradient: g, its norm and e are the full batch's and identical on every
worker, and the base step from w uses the all-reduced gradient at w + e (see ``ddp.py``).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from raystudy.models.batchnorm import bn_stats_frozen  # noqa: F401 (re-exported: SAM's callers use it)


class SAM:
    """Wraps ``base_optimizer`` (over ``model``'s parameters) so each ``step`` is a SAM step.

    Learning-rate schedulers should be attached to ``base_optimizer`` itself.
    """

    def __init__(
        self, model: nn.Module, base_optimizer: torch.optim.Optimizer, rho: float = 0.05, eps: float = 1e-12
    ) -> None:
        if rho < 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        self.model = model
        self.base_optimizer = base_optimizer
        self.rho = float(rho)
        self.eps = float(eps)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.base_optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.model.zero_grad(set_to_none=set_to_none)
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Callable[[], Tensor]) -> Tensor:
        """One SAM update; ``closure()`` runs a forward pass and returns the mean loss (no backward).

        Returns the (detached) loss at the current weights w, i.e. from the first pass.
        Cost: 2 forward + 2 backward passes, plus one copy of the parameters; no host sync.
        """
        self.zero_grad()
        loss = closure()
        loss.backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        grads = [p.grad for p in params]
        originals = [torch.empty_like(p) for p in params]
        with torch.no_grad():
            if params:
                # Global L2 norm over every parameter that received a gradient; eps keeps a zero
                # gradient from dividing by zero (then e = 0 and SAM reduces to the base step).
                # Fused (foreach) kernels and a device-tensor scale: no host sync, a few launches.
                grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
                scale = self.rho / (grad_norm + self.eps)
                torch._foreach_copy_(originals, params)
                torch._foreach_add_(params, torch._foreach_mul(grads, scale))
        self.zero_grad()
        with bn_stats_frozen(self.model):
            closure().backward()
        with torch.no_grad():
            # Restore w by copying, not by subtracting e: w + e - e != w in floating point.
            if params:
                torch._foreach_copy_(params, originals)
        self.base_optimizer.step()
        return loss.detach()

    def state_dict(self) -> dict[str, Any]:
        """The base optimiser's state dict (SAM itself keeps no state between steps)."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_optimizer.load_state_dict(state_dict)
