"""The head node's Prometheus and Grafana: the shipped dashboard queries exactly the study's metrics, the
servers listen on 127.0.0.1 only, and cluster.yaml starts them after Ray."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

from raystudy.cluster import metrics, monitoring

ROOT = Path(__file__).resolve().parents[1]


def _exported_series() -> set[str]:
    """Prometheus series names of the study's metrics as Ray exports them: prefixed ray_, counters _total,
    histograms _bucket/_sum/_count."""
    out = set()
    for metric in metrics._metrics().values():
        name, kind = f"ray_{metric._name}", type(metric).__name__
        out |= {f"{name}_total"} if kind == "Counter" else \
            {f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "Histogram" else {name}
    return out


def test_dashboard_queries_the_study_metrics():
    dash = json.loads(monitoring.DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b(ray_raystudy_\w+)", e)}
    exported = _exported_series()
    assert used <= exported, used - exported
    # every metric the study exports has a panel
    assert {re.sub(r"_(total|bucket|sum|count)$", "", s) for s in exported} == \
        {re.sub(r"_(total|bucket|sum|count)$", "", s) for s in used}
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"]) and dash["uid"] == "raystudy"


def test_servers_bind_localhost_only(tmp_path):
    prom = monitoring.prometheus_command(Path("/p/prometheus"), Path("/c.yml"), tmp_path)
    assert "--web.listen-address=127.0.0.1:9090" in prom
    cmd, env = monitoring.grafana_command(Path("/g"), Path("/g.ini"))
    assert env == {"GF_SERVER_HTTP_ADDR": "127.0.0.1", "GF_SERVER_HTTP_PORT": "3000"}
    assert cmd[:2] == ["/g/bin/grafana", "server"] and "--config=/g.ini" in cmd


def test_dashboard_lands_in_rays_provisioned_folder(tmp_path):
    copy = monitoring.install_dashboard(tmp_path / "metrics" / "grafana")
    assert copy == tmp_path / "metrics" / "grafana" / "dashboards" / "raystudy.json"
    assert json.loads(copy.read_text())["title"].startswith("raystudy")


def test_missing_binaries_are_one_line_exit_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "raystudy.cluster.monitoring", "--prometheus", str(tmp_path),
                           "--grafana", str(tmp_path), "--session", str(tmp_path), "--wait", "0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "missing" in done.stderr and "Traceback" not in done.stderr


def test_starts_detached_servers_and_stops_them_on_restart(tmp_path, monkeypatch):
    # Stand-in binaries (shell scripts that sleep) in the layout cluster.yaml downloads: the launcher
    # starts both, records their pids, and a second start stops the first pair.
    from ray.dashboard.consts import PROMETHEUS_CONFIG_INPUT_PATH
    assert Path(PROMETHEUS_CONFIG_INPUT_PATH).exists()  # Ray ships the scrape configuration it uses
    for path in (tmp_path / "prom" / "prometheus", tmp_path / "graf" / "bin" / "grafana"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\nexec sleep 60\n")
        path.chmod(0o755)
    session = tmp_path / "session"
    (session / "metrics" / "grafana").mkdir(parents=True)
    (session / "metrics" / "grafana" / "grafana.ini").write_text("[security]\nallow_embedding = true\n")
    (session / "logs").mkdir()
    monkeypatch.setattr(monitoring, "PIDS", tmp_path / "pids")
    monkeypatch.setattr(monitoring, "STARTUP_S", 0.3)
    args = ["--prometheus", str(tmp_path / "prom"), "--grafana", str(tmp_path / "graf"), "--session", str(session)]
    assert monitoring.main(args) == 0
    first = [int(p) for p in (tmp_path / "pids").read_text().split()]
    assert monitoring.main(args) == 0
    time.sleep(0.5)
    for pid in first:  # the first pair was stopped (gone, or a zombie until its parent, this test, reaps it)
        status = Path(f"/proc/{pid}/status")
        assert not status.exists() or status.read_text().split("State:")[1].split()[0] == "Z"
    monitoring.stop_previous(tmp_path / "pids")
    assert (session / "metrics" / "grafana" / "dashboards" / "raystudy.json").exists()


def test_cluster_yaml_starts_monitoring_after_ray_on_the_head():
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    head = " ".join(cfg["head_start_ray_commands"])
    assert head.index("ray start --head") < head.index("-m raystudy.cluster.monitoring")
    assert "RAY_GRAFANA_HOST=http://127.0.0.1:3000" in head and "RAY_PROMETHEUS_HOST=http://127.0.0.1:9090" in head
    setup = " ".join(cfg["head_setup_commands"])
    assert "prometheus" in setup and "grafana" in setup
    assert not any("monitoring" in c for c in cfg["worker_start_ray_commands"])
    assert all("--no-dev" in c for c in cfg["setup_commands"] if "uv sync" in c)
