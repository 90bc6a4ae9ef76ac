"""What a Hessian is taken over: which parameters, and the model in eval mode."""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@contextlib.contextmanager
def all_eval(model: nn.Module) -> Iterator[None]:
    """Eval mode for the duration; restores every submodule's own flag (mixed modes survive).

    Args:
        model: any module.

    Yields:
        None, with every submodule in eval mode. Cost: one walk over the modules.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def select_params(model: nn.Module, params: str | Sequence[str] | None) -> list[str]:
    """Names of the parameters H is taken over.

    Args:
        model: any module with parameters.
        params: None/"all" = every trainable parameter, "no_bn" = all but BatchNorm affine
            weights, or an explicit list of names (e.g. one layer's).

    Returns:
        The names, in ``model.named_parameters()`` order, without duplicates.

    Raises:
        ValueError: an unknown selector or name, or no trainable parameter selected.

    Cost: one walk over the parameters (and modules for "no_bn").
    """
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if params is None or params == "all":
        names = trainable
    elif params == "no_bn":
        bn = {f"{m_name}.{p_name}" if m_name else p_name
              for m_name, m in model.named_modules() if isinstance(m, _BatchNorm)
              for p_name, _ in m.named_parameters(recurse=False)}
        names = [n for n in trainable if n not in bn]
    elif isinstance(params, str):
        raise ValueError(f"params={params!r}: expected None, 'all', 'no_bn' or a list of names")
    else:
        known = dict(model.named_parameters())
        missing = [n for n in params if n not in known]
        if missing:
            raise ValueError(f"params: no parameter named {missing} in the model")
        names = [n for n in known if n in set(params)]  # model order, no duplicates
    if not names:
        raise ValueError("the model has no trainable parameters to take the Hessian over")
    return names
