"""One run of a study at a time: a lock object in the study's own storage, so two drivers on two machines
sharing a bucket see it too.

``<study>/lock.json`` names the holder (host, pid, a random token). It is created atomically (only one of
two racing runs can create it; see :mod:`raystudy.lockfile`) and rewritten every ``HEARTBEAT_S`` seconds by
a compare-and-swap that fails once anyone else has written it: the token is a fencing token. A second run
refuses with one line naming the holder, unless the lock is provably stale: not written for ``STALE_S``
seconds by the storage's clock, held by a process on this host that no longer exists (a driver killed with
kill -9), or malformed (not a JSON object of the expected fields; a warning names it). A stale lock is taken
over by the same compare-and-swap, so of two runs taking it over one wins.

A run that finds its lock gone or taken over (deleted by hand, or stopped with SIGSTOP past ``STALE_S``
while another run took over) must write nothing more: a fence is checked before every write and delete of
a :class:`~raystudy.storage.Store`, in the driver (the :class:`StudyLock`, for every Store of the study
through ``storage.FENCES``) and in every trial and measuring process (its :class:`Fence`, as ``Store.fence``),
and raises :class:`LockLost`. The driver's ``on_lost`` then prints one line and exits 2.
"""
from __future__ import annotations

import json
import math
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from raystudy.layout import lock_file
from raystudy.lockfile import Seen, backend_for
from raystudy.storage import Store

HEARTBEAT_S = 20.0
STALE_S = 120.0
PID_MAX = 2**22  # Linux's largest pid_max; a larger "pid" is not one


class StudyLocked(Exception):
    """Another live run holds the study; ``str(err)`` is one line naming it and the lock's location."""


class LockLost(Exception):
    """This run no longer holds its study's lock; ``str(err)`` is one line. Nothing more may be written."""


def parse(seen: Seen) -> tuple[dict[str, Any] | None, str]:
    """The holder record of a lock as read, or None and why it is malformed (one short phrase)."""
    if seen.data is None:
        return None, seen.problem
    try:
        holder = json.loads(seen.data)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None, "not JSON"
    if not isinstance(holder, dict):
        return None, f"not a JSON object but a {type(holder).__name__}"
    checks = {"token": lambda v: isinstance(v, str) and 0 < len(v) <= 128,
              "host": lambda v: isinstance(v, str) and 0 < len(v) <= 255,
              "pid": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 < v < PID_MAX,
              "heartbeat": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    for name, ok in checks.items():
        if not ok(holder.get(name)):
            return None, f"bad or missing field {name!r}"
    return holder, ""


def stale_reason(holder: dict[str, Any] | None, problem: str, age_s: float, stale_s: float) -> str:
    """Why the lock may be taken over, or "" while its holder may still be alive."""
    if holder is None:
        return f"malformed ({problem})"
    if not -stale_s <= age_s <= stale_s:  # NaN fails too; a time stamp far in the future was not written now
        return f"not written for {age_s:.0f} s"
    if holder["host"] == socket.gethostname() and holder["pid"] != os.getpid():
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return f"its process {holder['pid']} on this host is gone"
        except PermissionError:  # alive, someone else's
            pass
    return ""


@dataclass(frozen=True)
class Fence:
    """What a trial or measuring process needs to check that its run still holds the lock (picklable).
    ``check()`` costs one read of the lock object."""
    store_uri: str
    token: str

    def check(self) -> None:
        if self.store_uri not in _BACKENDS:
            store = Store(self.store_uri)
            _BACKENDS[self.store_uri] = (store, backend_for(store, lock_file(store), warn=False))
        store, backend = _BACKENDS[self.store_uri]
        _check(backend, self.token, store.uri_of(lock_file(store)))

    def portable(self) -> "Fence":
        return self


_BACKENDS: dict[str, tuple[Store, Any]] = {}  # per process: one client per study, not one per check


class StudyLock:
    """``with StudyLock(store):`` holds the study's lock for the duration (see the module docstring).
    ``on_lost(line)`` is called once, from whichever thread first finds the lock lost (the driver exits
    there); ``heartbeat_s``/``stale_s`` default to the module's constants."""

    def __init__(self, store: Store, heartbeat_s: float | None = None, stale_s: float | None = None,
                 on_lost: Callable[[str], None] | None = None):
        self.store, self.path = store, lock_file(store)
        self.where = store.uri_of(self.path)
        self.heartbeat_s = HEARTBEAT_S if heartbeat_s is None else heartbeat_s
        self.stale_s = STALE_S if stale_s is None else stale_s
        self.on_lost, self.lost = on_lost, ""
        self.token = uuid.uuid4().hex
        self.backend = backend_for(store, self.path)
        self.version: Any = None
        self._mutex = threading.Lock()  # one conditional write at a time: heartbeat vs release
        self._told = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _record(self) -> bytes:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                           "heartbeat": time.time()}).encode()

    def acquire(self) -> "StudyLock":
        """Take the lock, or raise StudyLocked (one line). Costs 1-3 requests; OSError if storage fails."""
        for _ in range(3):  # a lost race re-reads: the winner's fresh lock then refuses us
            seen = self.backend.read()
            if seen is None:
                self.version = self.backend.create(self._record())
            else:
                holder, problem = parse(seen)
                why = stale_reason(holder, problem, seen.age_s, self.stale_s)
                if not why:
                    raise StudyLocked(_describe(holder, seen.age_s, self.where))
                if problem:
                    print(f"warning: {self.where}: malformed lock ({problem}), treated as stale: taking it over",
                          file=sys.stderr, flush=True)
                try:
                    self.version = self.backend.replace(self._record(), seen.version)
                except OSError as err:  # e.g. a directory with files in it at lock.json
                    raise StudyLocked(f"storage: the lock {self.where} {problem or 'is stale'} and cannot be "
                                      f"replaced ({err.strerror or err}): remove it") from None
            if self.version is not None:
                self._beat = threading.Thread(target=self._heartbeat, name="study-lock", daemon=True)
                self._beat.start()
                return self
        raise StudyLocked(f"storage: the lock {self.where} keeps changing under us: is another run starting?")

    def beat(self) -> None:
        """One heartbeat: rewrite the lock if it is still ours, else raise LockLost. OSError when the
        storage does not answer (the next beat tries again). Costs one request (two after a retry)."""
        with self._mutex:
            if self.lost:
                raise LockLost(self.lost)
            version = self.backend.replace(self._record(), self.version)
            if version is None:  # written by someone else, deleted, or our own write's answer was lost
                seen = self.backend.read()
                holder = parse(seen)[0] if seen else None
                if holder is None or holder["token"] != self.token:
                    self._lose(_lost(self.where, holder))
                version = self.backend.replace(self._record(), seen.version)
                if version is None:
                    self._lose(_lost(self.where, None))
            self.version = version

    def check(self) -> None:
        """Raise LockLost unless the lock is still ours (the driver's ``Store.fence``). One read."""
        if self.lost:
            raise LockLost(self.lost)
        try:
            _check(self.backend, self.token, self.where)
        except LockLost as err:
            self._lose(str(err))

    def portable(self) -> Fence:
        """The Fence that trial and measuring processes check before each write."""
        return Fence(self.store.uri, self.token)

    def _lose(self, line: str) -> None:
        with self._told:  # the heartbeat and a write can find the loss at once: on_lost runs once
            first = not self.lost
            self.lost = self.lost or line
            if first and self.on_lost is not None:
                self.on_lost(self.lost)
        raise LockLost(self.lost)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.beat()
            except LockLost:
                return
            except Exception:  # storage briefly unreachable (OSError, a dropped connection): the next beat
                pass  # tries again; a traceback from this thread would only interleave with the run's output

    def release(self, delete: bool = True) -> None:
        """Stop the heartbeat and delete the lock if it is still ours (conditionally: never another's).
        ``delete=False`` only stops the heartbeat, at once: for storage known to be unreachable, where each
        request would wait out the S3 client's retries (~6 s) to fail; the lock left goes stale by itself."""
        self._stop.set()
        if not delete:
            return
        if self._beat is not None and self._beat is not threading.current_thread():
            self._beat.join(timeout=5)
        with self._mutex:
            if self.lost or self.version is None:
                return
            try:
                self.backend.delete(self.version)
            except OSError as err:
                print(f"warning: {self.where}: could not delete the lock: {err}", file=sys.stderr, flush=True)
            self.version = None

    def __enter__(self) -> "StudyLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _check(backend, token: str, where: str) -> None:
    seen = backend.read()
    holder = parse(seen)[0] if seen else None
    if holder is None or holder["token"] != token:
        raise LockLost(_lost(where, holder))


def _lost(where: str, holder: dict[str, Any] | None) -> str:
    how = (f"taken over by pid {holder['pid']} on {holder['host']}" if holder
           else "deleted or overwritten")
    return f"storage: this run lost the study's lock {where} ({how}): stopping without writing anything more"


def _describe(holder: dict[str, Any], age_s: float, where: str) -> str:
    return (f"storage: the study is being run by pid {holder['pid']} on {holder['host']} (alive "
            f"{max(age_s, 0):.0f} s ago; lock {where}): wait for it to finish, or delete the lock if that run is gone")
