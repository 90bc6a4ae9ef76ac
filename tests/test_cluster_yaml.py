"""cluster.yaml: valid under Ray's own cluster-launcher schema, checked offline, plus the rules Ray's
schema does not know (dashboard never public, locked environment, integer resources)."""
from __future__ import annotations

import copy
import socket
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture
def offline(monkeypatch):
    """Fail loudly if anything tries to reach the network (AWS included)."""

    def refuse(*args, **kwargs):
        raise AssertionError("cluster.yaml validation tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def prepared(raw: dict) -> dict:
    # prepare_config is what `ray up` runs before talking to the cloud: for provider "aws" it merges
    # ray/autoscaler/aws/defaults.yaml (a local file), merges setup commands and fills per-type
    # min/max workers. The AWS bootstrap (boto3: IAM, subnets, key pairs) is a later, separate step.
    return prepare_config(copy.deepcopy(raw))


def start_commands(cfg: dict) -> list[str]:
    return [c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in cfg[key]]


def test_validates_with_rays_schema_offline(raw, offline):
    cfg = prepared(raw)
    validate_config(cfg)  # raises jsonschema.ValidationError / ValueError when invalid
    assert cfg["cluster_name"] == "raystudy"
    assert cfg["provider"] == {"type": "aws", "region": "us-west-2"}
    assert cfg["head_node_type"] in cfg["available_node_types"]


def test_schema_check_is_real(raw, offline):
    # The same validation rejects a fractional GPU count and an unknown top-level key, so the test
    # above would fail on a broken file.
    bad = copy.deepcopy(raw)
    bad["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepared(bad))
    bad = copy.deepcopy(raw)
    bad["dashboard_host"] = "127.0.0.1"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepared(bad))


def test_dashboard_only_on_localhost(raw):
    cfg = prepared(raw)  # the merged file: no default command (which binds 0.0.0.0) may leak in
    starts = [c for c in start_commands(cfg) if "ray start" in c]
    assert len(starts) == 2
    for cmd in starts:
        assert "--dashboard-host=127.0.0.1" in cmd, cmd
    every_command = [c for key, v in cfg.items() if key.endswith("_commands") for c in v]
    assert not any("0.0.0.0" in c for c in every_command)


def test_ray_runs_from_the_locked_venv(raw):
    for cmd in start_commands(raw):
        assert "~/raystudy/.venv/bin/ray " in cmd, cmd
    assert raw["file_mounts"]["~/raystudy"] == "."
    setup = raw["setup_commands"]
    assert any("pip install" in c and "uv" in c for c in setup)
    sync = [c for c in setup if "uv sync --frozen" in c]
    assert len(sync) == 1 and "cd ~/raystudy" in sync[0]
    # Install uv before syncing with it.
    assert setup.index(sync[0]) > min(i for i, c in enumerate(setup) if "pip install" in c)
    assert not raw.get("docker")


def test_node_types(raw):
    cfg = prepared(raw)
    types = cfg["available_node_types"]
    for name, node in types.items():
        for key, value in node["resources"].items():
            assert type(value) is int and value >= 0, (name, key, value)
    head = types[cfg["head_node_type"]]
    assert head["resources"]["CPU"] == 0  # no training or measuring on the head
    assert head["max_workers"] == 0
    gpu = [n for name, n in types.items() if name != cfg["head_node_type"]]
    assert len(gpu) == 1 and gpu[0]["resources"]["GPU"] >= 1
    assert gpu[0]["node_config"]["InstanceType"].startswith("g5.")
    assert gpu[0]["min_workers"] == 0 and 1 <= gpu[0]["max_workers"] <= cfg["max_workers"]
    assert cfg["idle_timeout_minutes"] > 0
