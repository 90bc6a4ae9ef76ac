"""BatchNorm for data-parallel training: batch statistics of the whole batch across workers. The model-level
tools (find, freeze, recalibrate BatchNorm statistics) live in ``raystudy.models.batchnorm`` and are
re-exported here. Plain torch, no Ray."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from raystudy.models.batchnorm import (batchnorm_layers, bn_stats_frozen, recalibrate_batchnorm,  # noqa: F401
                                       train_mode_accuracy)


class _AllReduceSum(torch.autograd.Function):
    """Sum over the process group, differentiable: every rank gets the sum, and the gradient reaching
    each rank's input is the sum of every rank's gradient of the output (what the sum feeds)."""

    @staticmethod
    def forward(ctx, tensor: Tensor, group) -> Tensor:  # type: ignore[override]
        ctx.group = group
        out = tensor.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class HostSyncBatchNorm(_BatchNorm):
    """``nn.SyncBatchNorm`` for CPU tensors (gloo), which torch refuses (both SyncBatchNorm itself and
    DDP around it, so this is a plain ``_BatchNorm`` subclass of any dimension): in training mode with more
    than one process, the batch mean and (biased) variance are the whole batch's across the group,
    the running statistics are updated with its unbiased variance, and gradients flow through the
    statistics to every rank, so N workers on shards of a batch compute what one process computes on
    the batch. Statistics are summed in float64 (two passes: mean, then centred squares). Otherwise
    (eval mode, one process) it is plain BatchNorm. Same parameters, buffers and state-dict keys as
    ``BatchNorm*d``. Cost per forward: two all-reduces of ``C + 1`` and ``C`` float64 values (two more
    in backward), one host sync."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group=None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        group = self.process_group or dist.group.WORLD
        if not (self.training and input.device.type == "cpu" and dist.is_available() and dist.is_initialized()
                and dist.get_world_size(group) > 1):
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        x = input.double()
        sums = _AllReduceSum.apply(torch.cat([x.sum(dims), x.new_tensor([x.numel() / max(x.size(1), 1)])]), group)
        count = sums[-1]
        mean = sums[:-1] / count
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims), group) / count
        out = (centred * torch.rsqrt(var + self.eps).view(shape)).to(input.dtype)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                n = float(count)
                self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
                unbiased = var * (n / max(n - 1, 1))
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        return out


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with every BatchNorm converted to a synchronised one for data-parallel training:
    ``nn.SyncBatchNorm`` on CUDA, :class:`HostSyncBatchNorm` on the CPU. Parameters and buffers keep
    their identity (an optimiser built over them stays valid) and their state-dict keys, so the
    model's checkpoints load into the plain model. Returns the converted module (``model`` itself
    unless ``model`` is a BatchNorm)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert(model)


def _convert(module: nn.Module) -> nn.Module:
    if isinstance(module, _BatchNorm) and not isinstance(module, (nn.SyncBatchNorm, HostSyncBatchNorm)):
        out = HostSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
        return out
    for name, child in module.named_children():
        module.add_module(name, _convert(child))
    return module
