"""raystudy.geometry.data, the contract every estimator shares: batches checked once, the loss a
sample-weighted mean (an unequal last batch counts by its size), parameters swapped without touching the
module, eval mode restored whatever happens."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from raystudy.geometry.data import as_batches, eval_mode, mean_loss, model_device, n_samples


def _line() -> nn.Linear:
    """y = 2 x + 1, one input, one output."""
    model = nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(2.0)
        model.bias.fill_(1.0)
    return model


def test_batches_are_checked_once():
    data = [(torch.zeros(3, 2), torch.zeros(3)), (torch.zeros(1, 2), torch.zeros(1))]
    batches = as_batches(iter(data))  # a one-shot iterator: materialised
    assert len(batches) == 2 and batches[0][0] is data[0][0] and n_samples(batches) == 4
    with pytest.raises(ValueError, match="data is empty"):
        as_batches([])
    with pytest.raises(ValueError, match="batch 1: 2 inputs for 3 targets"):
        as_batches([data[0], (torch.zeros(2, 2), torch.zeros(3))])
    with pytest.raises(ValueError, match="batch 0: 0 inputs for 0 targets"):
        as_batches([(torch.zeros(0, 2), torch.zeros(0))])


def test_mean_loss_weights_batches_by_their_size():
    # Residuals of y = 2x + 1 against targets 0: 1, 3, 5 (a batch of 3: mean 35/3) and 7 (a batch of 1: 49).
    x = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    batches = [(x[:3], torch.zeros(3, 1)), (x[3:], torch.zeros(1, 1))]
    loss = mean_loss(_line(), nn.MSELoss(), batches)
    assert loss.item() == pytest.approx((1 + 9 + 25 + 49) / 4)  # 21; a mean of batch means would be 30.83


def test_swapped_parameters_leave_the_module_alone():
    model = _line()
    batches = [(torch.tensor([[1.0]]), torch.tensor([[0.0]]))]
    params = {"weight": torch.tensor([[0.0]]), "bias": torch.tensor([0.5])}
    assert mean_loss(model, nn.MSELoss(), batches, params).item() == pytest.approx(0.25)
    assert model.weight.item() == 2.0 and model.bias.item() == 1.0
    assert mean_loss(model, nn.MSELoss(), batches).item() == pytest.approx(9.0)  # (2 + 1)^2


def test_eval_mode_is_restored_even_after_an_error():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with eval_mode(model) as m:
        assert m is model and not model.training and not model[1].training
    assert model.training and model[1].training
    with pytest.raises(RuntimeError):
        with eval_mode(model):
            raise RuntimeError("an estimator failed")
    assert model.training
    model.eval()
    with eval_mode(model):
        pass
    assert not model.training  # it was in eval mode before: it stays there


def test_model_device():
    assert model_device(_line()) == torch.device("cpu")
    assert model_device(nn.ReLU()) == torch.device("cpu")  # no parameters
