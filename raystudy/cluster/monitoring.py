"""Prometheus and Grafana on the head node, so the Ray dashboard's Metrics view (and Grafana itself) shows
Ray's metrics and the study's own (``raystudy_*``, see ``raystudy.cluster.metrics``).

``python -m raystudy.cluster.monitoring`` (cluster.yaml runs it on the head right after ``ray start``):
waits for the Grafana configuration Ray's dashboard writes into its session folder, adds raystudy's
dashboard (``grafana_dashboard.json``) beside Ray's own, and starts both servers detached, listening on
127.0.0.1 only (reach them through SSH: ``ray dashboard cluster.yaml`` forwards 8265, ``ray attach
cluster.yaml -p 3000`` forwards Grafana). Prometheus scrapes with Ray's own configuration (its service
discovery finds every node); the binaries are the ones cluster.yaml's head set-up downloaded.
Exit 0 when both run, 2 with one line when a binary or Ray's session is missing.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

DASHBOARD = Path(__file__).with_name("grafana_dashboard.json")
STARTUP_S = 2.0  # a server that exits within this long has failed to start (port taken, bad config)
PIDS = Path.home() / ".raystudy" / "monitoring.pids"  # a restarted head stops the servers it started before
PROMETHEUS_ADDRESS, GRAFANA_ADDRESS = "127.0.0.1:9090", "127.0.0.1:3000"


def prometheus_command(binary: Path, config: Path, data: Path) -> list[str]:
    """Prometheus on 127.0.0.1:9090 with Ray's scrape configuration, its database in ``data``."""
    return [str(binary), f"--config.file={config}", f"--storage.tsdb.path={data}",
            f"--web.listen-address={PROMETHEUS_ADDRESS}"]


def grafana_command(home: Path, ini: Path) -> tuple[list[str], dict[str, str]]:
    """Grafana with Ray's grafana.ini (anonymous viewers, embedding allowed, Ray's provisioning), bound to
    127.0.0.1:3000 (``GF_SERVER_*`` override the ini); the command and its extra environment."""
    host, port = GRAFANA_ADDRESS.split(":")
    return ([str(home / "bin" / "grafana"), "server", f"--homepath={home}", f"--config={ini}", "web"],
            {"GF_SERVER_HTTP_ADDR": host, "GF_SERVER_HTTP_PORT": port})


def install_dashboard(grafana_dir: Path) -> Path:
    """Copy raystudy's dashboard into the folder Ray's provisioning serves (``<session>/metrics/grafana/
    dashboards``); Grafana lists it beside Ray's dashboards. Returns the copy's path."""
    target = grafana_dir / "dashboards" / "raystudy.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DASHBOARD, target)
    return target


def stop_previous(pids: Path | None = None) -> None:
    """Stop the servers an earlier start left running (``ray up`` again restarts Ray, not them); their
    pids are in ``pids`` (default ``PIDS``)."""
    import signal

    pids = pids or PIDS
    for pid in pids.read_text().split() if pids.exists() else []:
        try:
            os.killpg(int(pid), signal.SIGTERM)  # each was started as its own session: its group
        except (ValueError, ProcessLookupError, PermissionError):
            pass
    time.sleep(STARTUP_S / 2)


def _start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    with open(log, "ab") as out:  # detached: the servers outlive this command and the SSH session
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})})
    time.sleep(STARTUP_S)
    if proc.poll() is not None:
        raise RuntimeError(f"{cmd[0]} exited at once (code {proc.returncode}); see {log}")
    return proc.pid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raystudy.cluster.monitoring", description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", type=Path, default=Path.home() / "prometheus",
                        help="folder holding the prometheus binary (default ~/prometheus)")
    parser.add_argument("--grafana", type=Path, default=Path.home() / "grafana",
                        help="Grafana's home folder, holding bin/grafana (default ~/grafana)")
    parser.add_argument("--session", type=Path, default=Path("/tmp/ray/session_latest"),
                        help="the running Ray head's session folder")
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for Ray's Grafana configuration")
    args = parser.parse_args(argv)
    from ray.dashboard.consts import PROMETHEUS_CONFIG_INPUT_PATH

    grafana_dir = args.session / "metrics" / "grafana"
    deadline = time.monotonic() + args.wait
    while not (grafana_dir / "grafana.ini").exists() and time.monotonic() < deadline:
        time.sleep(1)  # the dashboard writes it a few seconds after `ray start` returns
    missing = [str(p) for p in (args.prometheus / "prometheus", args.grafana / "bin" / "grafana",
                                grafana_dir / "grafana.ini", Path(PROMETHEUS_CONFIG_INPUT_PATH)) if not p.exists()]
    if missing:
        print(f"monitoring: missing {', '.join(missing)} (is Ray's head running with its dashboard, and did "
              "cluster.yaml's head_setup_commands download Prometheus and Grafana?)", file=sys.stderr)
        return 2
    logs = args.session / "logs"
    install_dashboard(grafana_dir)
    stop_previous()
    try:
        prom = _start(prometheus_command(args.prometheus / "prometheus", Path(PROMETHEUS_CONFIG_INPUT_PATH),
                                         args.prometheus / "data"), logs / "prometheus.out")
        cmd, env = grafana_command(args.grafana, grafana_dir / "grafana.ini")
        graf = _start(cmd, logs / "grafana.out", env)
    except (OSError, RuntimeError) as err:
        print(f"monitoring: {err}", file=sys.stderr)
        return 2
    PIDS.parent.mkdir(exist_ok=True)
    PIDS.write_text(f"{prom} {graf}\n")
    print(f"monitoring: Prometheus (pid {prom}) on {PROMETHEUS_ADDRESS}, Grafana (pid {graf}) on {GRAFANA_ADDRESS} "
          "with the raystudy dashboard")
    return 0


if __name__ == "__main__":
    sys.exit(main())
