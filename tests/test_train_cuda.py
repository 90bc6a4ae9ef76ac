"""The training loop on a GPU: one host sync per epoch, the same batches as on the CPU, channels_last.
Skipped without CUDA. Imports only torch and raystudy's torch-only modules, so it runs on a GPU box
without Ray, pydantic or pyarrow: ``PYTHONPATH=. python -m pytest -q tests/test_train_cuda.py``."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from raystudy.train.epoch import BatchSchedule, TrainingData, TrainStep, train_epoch
from raystudy.train.sam import SAM
from support.synthetic_images import small_cnn, uint8_task

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("resident", [True, False])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_epoch_has_one_sync(resident, precision):
    task, schedule = uint8_task(), BatchSchedule(16, 0, 0)  # no augmentation: augment.py copies its draws blockingly
    model = small_cnn().cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step = TrainStep(model, opt, nn.CrossEntropyLoss(), sam=SAM(model, opt, rho=0.05), precision=precision)
    data = TrainingData(task, "cuda", resident=resident)
    train_epoch(step, data.batches(schedule, 1))  # warm-up: first-use allocations
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train_epoch(step, data.batches(schedule, 2))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) == 1, [str(w.message) for w in syncs]


def test_cuda_batches_equal_the_cpu_batches_resident_or_not():
    task, schedule = uint8_task(), BatchSchedule(40, 2, 2, recipe="crop2+flip")
    cpu = list(TrainingData(task, "cpu").batches(schedule, 1))
    for resident in (True, False):
        gpu = list(TrainingData(task, "cuda", resident=resident).batches(schedule, 1))
        assert len(gpu) == len(cpu) == 3
        for (xc, yc), (xg, yg) in zip(cpu, gpu):
            assert torch.equal(yc, yg.cpu()) and torch.allclose(xc, xg.cpu(), rtol=0, atol=1e-6)


def test_cuda_conv_nets_run_channels_last_and_keep_their_keys():
    model = small_cnn().cuda()
    keys = list(model.state_dict())
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss())
    assert step.channels_last and model[0].weight.is_contiguous(memory_format=torch.channels_last)
    step(uint8_task().x_train[:8].float().cuda(), uint8_task().y_train[:8].cuda())
    assert list(model.state_dict()) == keys


@pytest.mark.slow
def test_cuda_compile_runs_or_falls_back_cleanly():
    """torch.compile with its default backend (Triton) in bf16: a minute of compilation at most."""
    model = small_cnn().cuda()
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(),
                     precision="bf16", compile=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss = train_epoch(step, TrainingData(uint8_task(), "cuda").batches(BatchSchedule(40, 0, 0, "crop2+flip"), 1))
    assert loss == loss and 0 < loss < 10
    assert step.compiled or any("torch.compile failed" in str(w.message) for w in caught)
    assert list(model.state_dict()) == list(small_cnn().state_dict())
