"""Connecting to Ray is bounded and stoppable, and happens before the study writes anything (issue 13):
``--address 127.0.0.1:1`` retried for 425 s, ignored SIGTERM and left study.yaml and lock.json behind."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from raystudy.cluster.connect import _probe
from raystudy.run import main
from raystudy.study import StudyError
from support.studies import tiny_block, write_study_yaml

def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _study(tmp_path: Path) -> Path:
    return write_study_yaml(tmp_path, "c", tiny_block(name="b", lr=0.1, epochs=1))


def run(tmp_path: Path, *args: str) -> subprocess.Popen:
    path = _study(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.Popen([sys.executable, "-m", "raystudy.run", str(path), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_probe_refuses_a_closed_port_and_a_malformed_address_at_once():
    port = closed_port()
    t0 = time.monotonic()
    with pytest.raises(StudyError, match=rf"^--address: 127.0.0.1:{port}: no Ray cluster can be reached there"):
        _probe(f"127.0.0.1:{port}", "--address")
    with pytest.raises(StudyError, match=r"^RAY_ADDRESS: 'ray://' is not HOST:PORT"):
        _probe("ray://", "RAY_ADDRESS")
    assert time.monotonic() - t0 < 6


def test_an_unreachable_address_exits_2_at_once_and_writes_nothing(tmp_path, capsys):
    path = _study(tmp_path)
    port = closed_port()
    t0 = time.monotonic()
    assert main([str(path), "--address", f"127.0.0.1:{port}"]) == 2
    assert time.monotonic() - t0 < 15  # the probe's refusal is immediate; plan's checks come first
    err = capsys.readouterr().err.strip()
    assert err == f"--address: 127.0.0.1:{port}: no Ray cluster can be reached there (Connection refused)", err
    assert not (tmp_path / "runs").exists()  # no study.yaml, no lock.json


@pytest.mark.slow
def test_an_unreachable_address_through_the_cli_exits_2_within_30_s(tmp_path):
    t0 = time.monotonic()
    proc = run(tmp_path, "--address", f"127.0.0.1:{closed_port()}")
    out, err = proc.communicate(timeout=60)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and "no Ray cluster can be reached there" in err, err
    assert elapsed < 30, elapsed  # imports included (~10 s on a busy 2-core machine)
    assert not (tmp_path / "runs").exists()


class Silent:
    """A TCP server that accepts connections and never answers: Ray's client waits on it for minutes."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"

    def wait_for_client(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        self.conn, _ = self.sock.accept()

    def close(self) -> None:
        self.sock.close()


@pytest.mark.slow
def test_sigterm_while_connecting_exits_143_at_once_and_a_silent_address_gives_up_in_time(tmp_path):
    """SIGTERM arrives once the driver has probed the address (the server saw its connection) and sits in
    Ray's connect: exit 143, one line, nothing written. Left alone, the same driver gives up with exit 2
    (JOIN_S) rather than Ray's minutes of retries."""
    silent = Silent()
    try:
        proc = run(tmp_path, "--address", silent.address)
        silent.wait_for_client(timeout=90)  # the probe: the driver is connecting now
        time.sleep(2)  # into ray.init
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        out, err = proc.communicate(timeout=30)
        assert time.monotonic() - t0 < 10
        assert proc.returncode == 143, (out, err)
        assert err.strip().splitlines()[-1] == "stopped by SIGTERM while connecting to Ray; nothing was written"
        assert "Traceback" not in err and not (tmp_path / "runs").exists()

        proc = run(tmp_path, "--address", silent.address)
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 2, (out, err)
        assert err.strip().splitlines()[-1] == f"--address: {silent.address}: the Ray cluster there did not " \
                                               "accept this driver within 15 s", err
        assert "Traceback" not in err and not (tmp_path / "runs").exists()
    finally:
        silent.close()


def test_the_monitor_stops_first_at_exit_and_the_instance_still_works(tmp_path):
    # Ray stops the GCS before its autoscaler monitor, which then waits out a one-second grace at every exit;
    # raystudy stops the monitor of the local instance it started first. The instance does not need it.
    code = """
        import os, ray
        from raystudy.cluster import connect
        connect._start_local(1, {"log_to_driver": False, "logging_level": "ERROR"})
        monitor = ray._private.worker._global_node.all_processes["monitor"][0].process
        assert monitor.poll() is None
        connect._stop_monitor_first()
        assert monitor.poll() is not None, "monitor still running"
        assert ray.get(ray.remote(lambda: 41 + 1).remote()) == 42
        print("OK", monitor.pid)
    """
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=180, env=env, cwd=tmp_path)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-2000:]
    assert "autoscaler failed" not in out.stderr, out.stderr[-2000:]
