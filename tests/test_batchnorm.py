"""BatchNorm at measurement time: recalibrated statistics against hand-computed population moments, the
train-mode accuracy leaves every buffer alone, and `measure: {bn: recalibrate}` never touches the file."""
import dataclasses
import hashlib

import torch
from torch import nn

from raystudy.checkpoints import list_checkpoints
from raystudy.measure import measure_checkpoint
from raystudy.study import expand, load_study
from raystudy.storage import Store
from raystudy.train.batchnorm import batchnorm_layers, recalibrate_batchnorm, train_mode_accuracy
from raystudy.train.loop import train_trial
from support.studies import digits_block, write_study_yaml


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Dropout(0.5),
                         nn.Flatten(), nn.Linear(3 * 16, 4), nn.BatchNorm1d(4))


def test_recalibration_gives_the_population_moments_of_equal_batches():
    net = _net().eval()
    x = torch.randn(60, 1, 4, 4) * 3 + 1
    data = [(x[i:i + 20], torch.zeros(20, dtype=torch.long)) for i in range(0, 60, 20)]
    for bn in batchnorm_layers(net):  # stale statistics, as after training with another distribution
        bn.running_mean.fill_(7.0)
        bn.running_var.fill_(0.01)
    assert recalibrate_batchnorm(net, data) == 2
    with torch.no_grad():
        h = net[0](x).double()  # the first BN sees the conv output: per-channel moments over (N, H, W)
        batch_means = torch.stack([h[i:i + 20].mean(dim=(0, 2, 3)) for i in range(0, 60, 20)])
        batch_vars = torch.stack([h[i:i + 20].transpose(0, 1).reshape(3, -1).var(dim=1) for i in range(0, 60, 20)])
    bn = net[1]
    torch.testing.assert_close(bn.running_mean.double(), batch_means.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var.double(), batch_vars.mean(0), rtol=1e-5, atol=1e-6)
    assert bn.momentum == 0.1 and not net.training  # momentum and mode restored
    # With equal batches the average of batch means is the population mean.
    torch.testing.assert_close(bn.running_mean.double(), h.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6)


def test_train_mode_accuracy_uses_batch_statistics_and_changes_nothing():
    net = _net().eval()
    x, y = torch.randn(40, 1, 4, 4), torch.randint(0, 4, (40,))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    acc = train_mode_accuracy(net, [(x[:20], y[:20]), (x[20:], y[20:])])
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not net.training
    # Independent reference: a copy in train mode with dropout off, statistics discarded.
    ref = _net()
    ref.load_state_dict(before)
    ref.train()
    ref[3].eval()
    with torch.no_grad():
        pred = torch.cat([ref(x[:20]), ref(x[20:])]).argmax(1)
    assert acc == (pred == y).double().mean().item()


def test_recalibrated_measurement_leaves_the_checkpoint_alone(tmp_path):
    block = digits_block(name="cnn", lr=0.5, batch_size=64, metrics=["fisher_rao"],
                         measure={"max_samples": 128, "bn": "recalibrate"})
    trial = expand(load_study(write_study_yaml(tmp_path, "bn", block)))[0]
    assert trial.measure.bn == "recalibrate"
    store = Store(str(tmp_path / "s"))
    train_trial(trial, store)
    path = list_checkpoints(store, trial.trial_id)[-1].path
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    row = measure_checkpoint(store, path)
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == digest
    assert row["bn_mode"] == "recalibrate" and 0 <= row["train_acc_train_mode"] <= 1
    # The same weights measured with the stored statistics (training is deterministic): same batch-statistics
    # accuracy, different eval-mode numbers.
    as_trained = dataclasses.replace(trial, measure=trial.measure.model_copy(update={"bn": "stored"}))
    other = Store(str(tmp_path / "other"))
    train_trial(as_trained, other)
    stored = measure_checkpoint(other, list_checkpoints(other, trial.trial_id)[-1].path)
    assert stored["bn_mode"] == "stored" and stored["train_acc_train_mode"] == row["train_acc_train_mode"]
    assert stored["train_loss"] != row["train_loss"]
