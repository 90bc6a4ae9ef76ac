"""raystudy.lockfile's compare-and-swap on local disk (and the best-effort backend, on the same disk), and
raystudy.lock's pure parts: what a record must hold, when a lock is stale, a fence that travels by pickle.
No Ray, no second process; the races themselves are in test_lock.py."""
from __future__ import annotations

import json
import math
import os
import pickle
import socket
import subprocess
import sys
import time

import pytest

from raystudy.lock import Fence, LockLost, StudyLock, parse, stale_reason
from raystudy.lockfile import BestEffortBackend, LocalBackend, Seen, backend_for
from raystudy.storage import Store

GOOD = {"host": "h", "pid": 42, "token": "t" * 32, "heartbeat": 1.5}


def _backends(tmp_path):
    (tmp_path / "study").mkdir()  # an object store has no folders to make; pyarrow's local files need one
    path = str(tmp_path / "study" / "lock.json")
    return {"local": LocalBackend(path), "best effort": BestEffortBackend(Store(tmp_path / "study"), path, warn=False)}


@pytest.mark.parametrize("kind", ["local", "best effort"])
def test_create_replace_delete_succeed_only_on_the_version_read(tmp_path, kind):
    lock = _backends(tmp_path)[kind]
    assert lock.read() is None
    v1 = lock.create(b"one")
    assert v1 is not None and lock.create(b"two") is None  # exists already: refused, unchanged
    seen = lock.read()
    assert seen.data == b"one" and seen.version == v1 and seen.problem == "" and abs(seen.age_s) < 5
    assert lock.replace(b"three", b"not the version read") is None and lock.read().data == b"one"
    v2 = lock.replace(b"three", v1)
    assert v2 is not None and lock.read().data == b"three"
    assert lock.delete(v1) is False and lock.read().data == b"three"  # an old version deletes nothing
    assert lock.delete(v2) is True and lock.read() is None
    assert sorted(p.name for p in (tmp_path / "study").iterdir() if not p.name.startswith(".")) == []


def test_age_is_read_by_the_storage_clock(tmp_path):
    lock = _backends(tmp_path)["local"]
    lock.create(b"x")
    past = time.time() - 100
    os.utime(lock.path, (past, past))
    assert 95 < lock.read().age_s < 110


def test_local_backend_reports_what_is_not_a_file(tmp_path):
    lock = _backends(tmp_path)["local"]
    os.makedirs(lock.path)
    seen = lock.read()
    assert seen.data is None and seen.problem == "it is a directory"
    assert lock.create(b"x") is None  # the name is taken, by a folder
    assert lock.replace(b"x", seen.version) == b"x" and lock.read().data == b"x"  # an empty folder is replaced


def test_best_effort_says_so_once_and_local_needs_no_warning(tmp_path, capsys):
    store = Store(tmp_path / "study")
    assert isinstance(backend_for(store, store.path("lock.json")), LocalBackend)
    BestEffortBackend(store, store.path("lock.json"))
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: {tmp_path}/study/lock.json: the study lock is best effort")


def _seen(obj) -> Seen:
    return Seen(obj if isinstance(obj, bytes) else json.dumps(obj).encode(), None, 0.0)


def test_parse_takes_exactly_a_complete_record():
    assert parse(_seen(GOOD)) == (GOOD, "")
    assert parse(_seen({**GOOD, "extra": [1]}))[0]["extra"] == [1]  # more fields are fine
    assert parse(_seen(b"{")) == (None, "not JSON")
    assert parse(_seen([GOOD])) == (None, "not a JSON object but a list")
    assert parse(_seen({**GOOD, "pid": 0})) == (None, "bad or missing field 'pid'")
    assert parse(_seen({**GOOD, "pid": 2**22})) == (None, "bad or missing field 'pid'")  # above Linux's pid_max
    assert parse(_seen({**GOOD, "token": ""})) == (None, "bad or missing field 'token'")
    assert parse(_seen({**GOOD, "heartbeat": math.inf})) == (None, "bad or missing field 'heartbeat'")
    assert parse(Seen(None, None, 0.0, "it is a directory")) == (None, "it is a directory")


def test_stale_only_when_provably_so():
    other = {**GOOD, "host": "another-host"}
    assert stale_reason(other, "", 0.0, 120) == ""  # fresh, elsewhere: alive as far as we can tell
    assert stale_reason(other, "", 120.0, 120) == ""  # at the limit: not yet
    assert stale_reason(other, "", 121.0, 120) == "not written for 121 s"
    assert stale_reason(other, "", -121.0, 120) == "not written for -121 s"  # from the future: not written now
    assert stale_reason(other, "", math.nan, 120).startswith("not written for")
    assert stale_reason(None, "not JSON", 0.0, 120) == "malformed (not JSON)"
    here = {**GOOD, "host": socket.gethostname()}
    assert stale_reason({**here, "pid": os.getpid()}, "", 0.0, 120) == ""  # our own process
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    assert stale_reason({**here, "pid": dead}, "", 0.0, 120) == f"its process {dead} on this host is gone"


def test_the_fence_travels_by_pickle_and_checks_the_token(tmp_path):
    lock = StudyLock(Store(tmp_path / "study"), heartbeat_s=3600).acquire()
    try:
        fence = pickle.loads(pickle.dumps(lock.portable()))
        assert fence == Fence(lock.store.uri, lock.token)
        fence.check()
        holder = rf"\(taken over by pid {os.getpid()} on {socket.gethostname()}\)"
        with pytest.raises(LockLost, match=rf"^storage: this run lost the study's lock .*lock.json {holder}"):
            Fence(lock.store.uri, "not-ours").check()
    finally:
        lock.release()
