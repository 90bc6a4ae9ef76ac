"""--dry-run: the grid and a training cost from a measured throughput, with nothing started or written."""
import pytest
import torch

from raystudy.study.cost import study_cost, throughput
from raystudy.run import main
from raystudy.study import expand, load_study

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


CIFAR = """
name: gpu
storage: {tmp}/runs
blocks:
  - name: c10
    family: images
    task: cifar10
    data_root: {tmp}/empty
    model: resnet18_cifar
    regime: base
    seed: [0, 1]
    lr: 0.1
    batch_size: 256
    epochs: 10
    metrics: [corruption]
"""


def test_dry_run_without_the_data_names_what_to_fetch(write_study, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    path = write_study(CIFAR)
    assert main([str(path), "--dry-run", "--device", "h100"]) == 0
    out = capsys.readouterr().out
    assert "dataset cifar10: not downloaded yet (0.17 GB)" in out and "dataset cifar10-c: not downloaded yet" in out
    assert "not measured on this profile" in out and "--record h100" in out  # no invented GPU numbers
    # An unknown total is said to be unknown, not printed as 0 device-hours.
    assert "training time unknown (no configuration of this study measured)" in out and "0 device" not in out
    assert not (tmp_path / "runs").exists()
    # A real run still refuses the missing data, before anything starts.
    assert main([str(path)]) == 2 and "missing" in capsys.readouterr().err


def test_unknown_device_profile_is_one_line(write_study, capsys):
    assert main([str(write_study(CIFAR)), "--dry-run", "--device", "tpu9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("--device: unknown device profile 'tpu9'") and "h100" in err and "\n" not in err


def test_recorded_throughput_becomes_gpu_hours(tmp_path, write_study, monkeypatch):
    import json

    from raystudy.study import cost
    table = tmp_path / "throughput.json"
    table.write_text(json.dumps({"format": 1, "profiles": {"h100": {"device": "H100", "entries": []}}}))
    monkeypatch.setattr(cost, "PROFILES", table)
    config = cost._config("resnet18_cifar", {}, (3, 32, 32), 10, 512, "fp32")
    cost.record_throughput("h100", config, 20_000.0, "NVIDIA H100", table=table)
    cost.record_throughput("h100", config, 25_000.0, "NVIDIA H100", table=table)  # re-measured: replaces
    assert len(json.loads(table.read_text())["profiles"]["h100"]["entries"]) == 1
    # batch 256 asked, 512 recorded: the nearest recorded batch of the same model, input and precision
    assert cost.profile_throughput("h100", {**config, "batch": 256}, table) == (25_000.0, 512)
    assert cost.profile_throughput("h100", {**config, "precision": "bf16"}, table) is None
    (tmp_path / "empty").mkdir()
    trials = expand(load_study(write_study(CIFAR)))
    (block,) = study_cost(trials, torch.device("cpu"), profile="h100")
    assert not block.unmeasured and block.device_hours == pytest.approx(2 * 10 * 50_000 / 25_000 / 3600)


def test_a_partly_measured_total_is_a_lower_bound():
    from raystudy.study.cost import BlockCost, format_cost
    known = BlockCost("a", 2, 2, 1e6, {"resnet18_cifar 3x32x32 -> 10, batch 256, fp32": 25_000.0}, 2.0, [])
    unknown = BlockCost("b", 2, 2, 1e6, {"vit_small_data 3x32x32 -> 10, batch 256, fp32": None}, 0.0,
                        ["vit_small_data 3x32x32 -> 10, batch 256, fp32"])
    assert "total: 2 trials, 2 checkpoints, 2 device-hours of training" in format_cost([known], torch.device("cpu"))
    out = format_cost([known, unknown], torch.device("cpu"))
    assert "training time unknown (at least 2 device-hours for the measured configurations)" in out
