"""One run of a study at a time: a lock file in the study's own storage, so two drivers on two machines
sharing a bucket see it too.

``<study>/lock.json`` names the holder (host, pid, a random token) and is rewritten every ``HEARTBEAT_S``
seconds while the run lives. A second run refuses with one line naming the holder, unless the lock is
stale: its heartbeat is older than ``STALE_S``, or its holder is a process on this host that no longer
exists (a driver killed with kill -9 leaves its lock behind; the rerun takes it over at once). Object
stores have no atomic create-if-absent here, so acquiring writes the lock and reads it back: of two runs
racing within milliseconds, the one whose token is not the one stored steps back.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from raystudy.storage import Store

HEARTBEAT_S = 20.0
STALE_S = 120.0


class StudyLocked(Exception):
    """Another live run holds the study; ``str(err)`` is one line naming it and the lock's location."""


class StudyLock:
    """``with StudyLock(store):`` holds the study's lock for the duration (see the module docstring)."""

    def __init__(self, store: Store):
        self.store, self.path = store, store.path("lock.json")
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _record(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "token": self.token, "heartbeat": time.time()}

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.store.read_bytes(self.path))
        except (OSError, ValueError):  # no lock, or a half-readable one: nobody holds it
            return None

    def acquire(self) -> "StudyLock":
        holder = self._holder()
        if holder and holder.get("token") != self.token and not _stale(holder):
            raise StudyLocked(_describe(holder, self.store.uri_of(self.path)))
        self.store.write_text(self.path, json.dumps(self._record()))
        winner = self._holder()
        if winner and winner.get("token") != self.token:
            raise StudyLocked(_describe(winner, self.store.uri_of(self.path)))
        self._beat = threading.Thread(target=self._heartbeat, name="study-lock", daemon=True)
        self._beat.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.store.write_text(self.path, json.dumps(self._record()))
            except OSError:  # storage briefly unreachable: the next beat tries again
                pass

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        holder = self._holder()
        if holder and holder.get("token") == self.token:
            self.store.delete_file(self.path)

    def __enter__(self) -> "StudyLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _stale(holder: dict) -> bool:
    if time.time() - float(holder.get("heartbeat", 0)) > STALE_S:
        return True
    if holder.get("host") == socket.gethostname():
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, KeyError, ValueError, TypeError):
            return False
    return False


def _describe(holder: dict, where: str) -> str:
    age = time.time() - float(holder.get("heartbeat", 0))
    return (f"storage: the study is being run by pid {holder.get('pid')} on {holder.get('host')} (alive "
            f"{age:.0f} s ago; lock {where}): wait for it to finish, or delete the lock if that run is gone")
