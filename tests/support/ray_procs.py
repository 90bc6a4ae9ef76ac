"""Find a Ray worker process of this test's Ray instance by its process title, from /proc.

/proc rather than Ray's State API: the State API waits on the dashboard, which a loaded 2-core
machine starts late, so a kill aimed through it can land after the work it meant to interrupt."""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import ray


@contextlib.contextmanager
def local_ray(dashboard: bool = False) -> Iterator[str]:
    """A private Ray instance of two logical CPUs for the test (workers' logs not echoed); yields its GCS address
    and shuts it down after. Start it after anything its workers must inherit (AWS_* of an S3 server)."""
    ray.init(num_cpus=2, include_dashboard=dashboard, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def raylet_pid() -> int:
    """The pid of the raylet of the Ray instance this process started (``ray.init`` without address)."""
    return ray._private.worker._global_node.all_processes["raylet"][0].process.pid


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def find_worker(title: bytes, raylet: int, deadline: float) -> int:
    """The pid of a descendant of ``raylet`` whose title starts with ``title`` (Ray titles an actor's
    process ``ray::ClassName`` or ``ray::ClassName.method``). Workers with a runtime env start through
    a setup process, so the raylet is an ancestor, not always the parent. Polls every 50 ms until
    ``deadline`` (time.time() seconds), then raises TimeoutError."""
    while time.time() < deadline:
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if not f.read().startswith(title):
                        continue
                pid = int(entry)
                while pid > 1 and pid != raylet:
                    pid = _parent(pid)
            except (OSError, IndexError, ValueError):  # the process ended while we looked
                continue
            if pid == raylet:
                return int(entry)
        time.sleep(0.05)
    raise TimeoutError(f"no process titled {title.decode()} appeared")
