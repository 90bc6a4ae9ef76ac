"""raystudy.geometry.hessian_scope: which parameters a Hessian is taken over (by selector or by name, in
the model's order) and a whole-model eval mode that gives every submodule its own mode back."""
from __future__ import annotations

import pytest
from torch import nn

from raystudy.geometry.hessian_scope import all_eval, select_params


def _net() -> nn.Sequential:
    """0: Linear(3, 4), 1: BatchNorm1d(4), 2: ReLU, 3: Linear(4, 2)."""
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


def test_selectors():
    net = _net()
    assert select_params(net, None) == select_params(net, "all") == [
        "0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"]
    assert select_params(net, "no_bn") == ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert select_params(net, ["3.bias", "0.weight", "3.bias"]) == ["0.weight", "3.bias"]  # model order, once
    net[0].weight.requires_grad_(False)
    assert select_params(net, "all")[0] == "0.bias"  # frozen parameters are not in H


def test_bad_selections_say_what_is_wrong():
    net = _net()
    with pytest.raises(ValueError, match=r"params='bn': expected None, 'all', 'no_bn' or a list of names"):
        select_params(net, "bn")
    with pytest.raises(ValueError, match=r"no parameter named \['4.weight'\]"):
        select_params(net, ["0.weight", "4.weight"])
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        select_params(frozen, "all")
    with pytest.raises(ValueError, match="no trainable parameters"):
        select_params(nn.BatchNorm1d(2), "no_bn")


def test_all_eval_restores_mixed_modes():
    net = _net()
    net[1].eval()  # a frozen BatchNorm inside a training model
    with all_eval(net):
        assert not any(m.training for m in net.modules())
    assert [m.training for m in net.modules()] == [True, True, False, True, True]
