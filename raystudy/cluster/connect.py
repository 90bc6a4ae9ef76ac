"""Joining or starting Ray, bounded in time and stoppable, before the study writes anything.

``--address`` (or ``RAY_ADDRESS``) is probed with a plain TCP connect first (``PROBE_S``), then joined by
``ray.init`` in a helper thread that the main thread waits for at most ``JOIN_S``: Ray retries an address
that does not answer for minutes, inside calls a signal cannot interrupt. A cluster that cannot be reached
is one line and exit 2 within 30 s. SIGTERM is honoured throughout: while connecting it ends the process at
once (exit 143, one line; nothing has been written yet); afterwards it stops the run as Ctrl-C does while
Tune runs (exit 130, resumable) and otherwise raises SystemExit(143) in the main thread, so the run's
cleanup (lock, measuring pool) still happens. Without an address the machine's own
resources are checked against the study before a local Ray instance starts.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from urllib.parse import urlsplit

from raystudy.study import Study, StudyError

PROBE_S = 5.0  # a TCP connect to a live GCS answers in milliseconds
JOIN_S = 15.0  # ray.init joining a live cluster takes 1-5 s; with the probe and imports, under 30 s
TERMINATED = 143  # 128 + SIGTERM, the shell's convention


def quiet_ray(verbose: int) -> None:
    """Ray's own console output only when asked for (``verbose >= 3``, ``-vv``): its INFO logging, the
    token-auth and packaging notices. And no second environment: under ``uv run`` Ray would rebuild the
    driver's uv environment for its workers on every run (~18 s); the workers of a local instance, and the
    nodes of a cluster.yaml cluster, already run this locked environment (``RAY_ENABLE_UV_RUN_RUNTIME_ENV=1``
    brings the rebuild back)."""
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    from ray._private import ray_constants
    ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV = os.environ["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] not in ("0", "false")
    if verbose < 3:
        for name in ("ray", "ray.tune", "ray.train", "ray.data"):
            logging.getLogger(name).setLevel(logging.WARNING if verbose >= 2 else logging.ERROR)
        for name in ("ray.tune", "ray.train"):  # their errors come with tracebacks; raystudy says each in a line
            logging.getLogger(name).setLevel(logging.CRITICAL)


def _init_options(verbose: int) -> dict:
    """Worker output reaches the console only at ``verbose >= 3``; failures reach it anyway, as one line per
    trial or checkpoint."""
    return {"log_to_driver": verbose >= 3, "logging_level": "INFO" if verbose >= 3 else "ERROR"}


def will_join(address: str | None) -> bool:
    """Whether ``connect(address)`` would join an existing cluster (an address, ``RAY_ADDRESS``, or a cluster
    ``ray start`` runs on this machine) rather than start a local instance. No connection is made."""
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        return address != "local"
    from ray._private.services import find_bootstrap_address, find_gcs_addresses
    started = find_bootstrap_address(None)
    return bool(started and started in find_gcs_addresses())


def connect(address: str | None = None, num_cpus: int | None = None, study: Study | None = None,
            study_path: str = "study", verbose: int = 1) -> str:
    """Join the cluster asked for (``--address``, ``RAY_ADDRESS``) or one started with ``ray start`` on this
    machine; otherwise start a new local Ray instance of our own, even when another program (another study)
    runs one here: joining it would share its CPUs and die with it. With ``study``, resources this machine
    can never provide are refused (StudyError naming the field) before a local instance starts. Returns
    what it did, in words. Raises StudyError for an address that cannot be reached or joined; ends the
    process with exit 2 if joining hangs past ``JOIN_S`` (the stuck thread cannot be cancelled)."""
    import ray

    if ray.is_initialized():
        return "using the Ray instance this process already holds"
    quiet_ray(verbose)
    options = _init_options(verbose)
    label = "--address" if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS")
    previous = _on_sigterm(_stop_now)
    try:
        if address and address != "local":
            if address != "auto":
                _probe(address, label)
            _join(address, label, options)
            return f"joined the Ray cluster at {address}"
        from ray._private.services import find_bootstrap_address, find_gcs_addresses
        started = find_bootstrap_address(None)  # written by `ray start` only, not by another program's ray.init
        if started and started in find_gcs_addresses():
            _join(started, "the `ray start` cluster", options)
            return f"joined the cluster `ray start` runs at {started}"
        if study is not None:
            check_local(study, study_path, num_cpus)
        return _start_local(num_cpus, options)
    finally:
        _on_sigterm(_stop_after_cleanup if ray.is_initialized() else previous)


def check_local(study: Study, study_path: str, num_cpus: int | None) -> None:
    """StudyError naming the field when this machine (``num_cpus`` or its CPU count, its visible GPUs)
    can never hold what the study asks for: checked before Ray starts, since a local instance has exactly
    these resources. Cost: a GPU count (NVML), no Ray."""
    import torch
    from ray._private.utils import get_num_cpus

    from raystudy.cluster.resources import NodeShape, check_resources
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    check_resources(study, study_path, [NodeShape("this machine", float(num_cpus or get_num_cpus()), gpus)], None)


def _probe(address: str, label: str) -> None:
    """StudyError unless something accepts a TCP connection at ``address`` (HOST:PORT or ray://HOST:PORT)."""
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or not port:
        raise StudyError(f"{label}: {address!r} is not HOST:PORT (or ray://HOST:PORT, auto, local)")
    try:
        socket.create_connection((host, port), timeout=PROBE_S).close()
    except OSError as err:
        why = f"no answer within {PROBE_S:g} s" if isinstance(err, TimeoutError) else err.strerror or type(err).__name__
        raise StudyError(f"{label}: {address}: no Ray cluster can be reached there ({why})") from None


def _join(address: str, label: str, options: dict) -> None:
    """``ray.init(address)`` in a helper thread, waited for ``JOIN_S`` at most, so the main thread stays
    free to take signals. A failure is StudyError; a hang prints one line and exits 2 at once."""
    import ray

    failure: list[BaseException] = []

    def init() -> None:
        try:
            ray.init(address=address, **options)
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            failure.append(err)

    quiet = _QuietThreadWarning()
    logging.getLogger("ray._private.worker").addFilter(quiet)
    try:
        thread = threading.Thread(target=init, name="raystudy-connect", daemon=True)
        thread.start()
        thread.join(JOIN_S)
    finally:
        logging.getLogger("ray._private.worker").removeFilter(quiet)
    if thread.is_alive():
        # The thread is stuck inside Ray and cannot be stopped; a normal exit would wait on Ray's atexit
        # shutdown, which waits on that thread. Nothing has been written: leave at once.
        _leave(f"{label}: {address}: the Ray cluster there did not accept this driver within {JOIN_S:g} s", 2)
    if failure:
        first = next((ln.strip() for ln in str(failure[0]).splitlines() if ln.strip()), type(failure[0]).__name__)
        raise StudyError(f"{label}: {address}: cannot join the Ray cluster there: {first[:300]}")


def _start_local(num_cpus: int | None, options: dict) -> str:
    """A one-machine instance on the loopback address: its GCS, raylet and metrics endpoint (the study's own
    metrics among them, served without a token) listen on 127.0.0.1 only, not on every interface. Ray maps
    an explicit 127.0.0.1 node address to the machine's IP, and takes loopback only in this mode. Runs in
    the main thread (Ray registers its shutdown handlers there); Ray's SIGTERM handler, active during the
    start, cleans its processes up and raises SystemExit, which becomes exit 143 here."""
    import ray
    from ray._private import ray_constants

    os.environ.setdefault(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, "0")  # for the processes Ray starts
    ray_constants.ENABLE_RAY_CLUSTER = os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] != "0"  # read at import
    try:
        ray.init(address="local", num_cpus=num_cpus, **options)
    except SystemExit:
        print("stopped by SIGTERM while starting Ray; nothing was written", file=sys.stderr, flush=True)
        raise SystemExit(TERMINATED) from None
    atexit.unregister(_stop_monitor_first)  # once per process, however many instances it starts in turn
    atexit.register(_stop_monitor_first)  # runs before Ray's own exit handler, registered when ray was imported
    return f"started a local Ray instance ({int(ray.cluster_resources().get('CPU', 0))} CPUs)"


def _stop_monitor_first() -> None:
    """At exit, just before Ray's own shutdown of the local instance: stop its autoscaler monitor at once
    (SIGKILL). Ray stops its processes in turn, the GCS before the monitor, which answers SIGTERM by reporting
    its own death to that stopped GCS and is killed after Ray's one-second grace: a second at the end of
    every run, for a process that keeps no state and that a one-machine instance never uses. Ray has no
    public call for it (``Node.kill_monitor``, private): if it changes, Ray's own shutdown is left as it is."""
    from ray._private import worker
    node = getattr(worker, "_global_node", None)
    if node is not None and getattr(node, "head", False):
        with contextlib.suppress(Exception):
            node.kill_monitor(check_alive=False)


class _QuietThreadWarning(logging.Filter):
    """Drops Ray's warning that it sets no SIGTERM handler off the main thread: this module sets its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


def _on_sigterm(handler):
    """Install ``handler`` for SIGTERM (main thread only: elsewhere Python cannot); return the previous one."""
    if threading.current_thread() is not threading.main_thread() or handler is None:
        return None
    return signal.signal(signal.SIGTERM, handler)


def _leave(line: str, code: int) -> None:
    print(line, file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(code)


def _stop_now(signum, frame) -> None:
    _leave("stopped by SIGTERM while connecting to Ray; nothing was written", TERMINATED)


def _stop_after_cleanup(signum, frame) -> None:
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        # Tune is running and holds SIGINT: stop as Ctrl-C does (trials checkpointed, exit 130, resumable).
        signal.raise_signal(signal.SIGINT)
        return
    print("stopped by SIGTERM; rerun the same command to resume", file=sys.stderr, flush=True)
    raise SystemExit(TERMINATED)
