"""--dry-run: the grid and a training cost from a measured throughput, with nothing started or written."""
import pytest
import torch

from raystudy.cost import study_cost, throughput
from raystudy.run import main
from raystudy.spec import expand, load_study

STUDY = """
name: dry
storage: {tmp}/runs
blocks:
  - name: circles
    family: circles
    task: circles
    factor: [0.3, 0.6]
    model: mlp
    model_args: {{hidden: [8]}}
    regime: [base, sam]
    seed: [0, 1, 2]
    lr: 0.01
    batch_size: 10
    epochs: 4
    checkpoints: [0, 2, 4]
"""


def test_cost_counts_the_grid_and_doubles_sam(write_study):
    trials = expand(load_study(write_study(STUDY.replace("{{", "{").replace("}}", "}"))))
    (cost,) = study_cost(trials, torch.device("cpu"))
    assert (cost.block, cost.trials, cost.checkpoints) == ("circles", 12, 36)
    # 50 training points x 4 epochs per trial; the 6 SAM trials count twice.
    assert cost.images == 50 * 4 * (6 + 2 * 6)
    (speed,) = cost.throughput.values()
    assert cost.device_hours == pytest.approx(cost.images / speed / 3600)


def test_throughput_is_positive_and_needs_no_weights():
    assert throughput("mlp", {"hidden": [4]}, (2,), 2, 16, torch.device("cpu"), steps=2) > 0
    assert throughput("resnet18_imagenet", {"pretrained": True}, (3, 64, 64), 200, 4, torch.device("cpu"),
                      steps=1) > 0


def test_dry_run_prints_and_writes_nothing(write_study, tmp_path, capsys):
    path = write_study(STUDY.replace("{{", "{").replace("}}", "}"))
    assert main([str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "study dry: 12 trials" in out and "circles" in out and "img/s" in out and "total: 12 trials" in out
    assert not (tmp_path / "runs").exists()
