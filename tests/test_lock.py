"""The study lock (issue 13, item 2): one holder of two processes racing, on local disk and on a real S3 API
(moto's server); fencing by heartbeat and by every write; takeover only of a provably stale lock; malformed
locks treated as stale with one warning; release never deletes another run's lock."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from raystudy.lock import LockLost, StudyLock, StudyLocked
from raystudy.storage import Store
from support.s3_server import BUCKET, s3_bucket
from support.studies import tiny_block, write_study_yaml

ROUNDS = 20


def _racer(root: str, rounds: int, barrier, results) -> None:
    """One of two processes: each round, wait for the other, then both call acquire() on the same study."""
    for i in range(rounds):
        barrier.wait()
        try:
            StudyLock(Store(f"{root}/r{i}"), heartbeat_s=3600).acquire()
            results.put((i, os.getpid()))
        except StudyLocked:
            pass
        except Exception as err:  # anything else is a failure the parent must see
            results.put((i, f"error: {type(err).__name__}: {err}"))
    barrier.wait()


def _race(root: str) -> dict[int, list]:
    ctx = mp.get_context("spawn")  # no fork of a process that runs moto's server threads
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(root, ROUNDS, barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    won: dict[int, list] = {i: [] for i in range(ROUNDS)}
    while not results.empty():
        i, who = results.get()
        won[i].append(who)
    return won


def test_two_processes_racing_one_holder_local(tmp_path):
    won = _race(str(tmp_path))
    assert all(len(w) == 1 and isinstance(w[0], int) for w in won.values()), won


def test_two_processes_racing_one_holder_s3():
    with s3_bucket() as uri:
        won = _race(f"{uri}/race")
    assert all(len(w) == 1 and isinstance(w[0], int) for w in won.values()), won


def _lock_file(tmp_path: Path) -> Path:
    return tmp_path / "study" / "lock.json"


def _make_old(path: Path, seconds: float = 3600) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_live_holder_refuses_in_one_line(tmp_path):
    store = Store(tmp_path / "study")
    with StudyLock(store, heartbeat_s=3600):
        with pytest.raises(StudyLocked) as err:
            StudyLock(store).acquire()
    msg = str(err.value)
    assert "\n" not in msg and f"pid {os.getpid()}" in msg and str(_lock_file(tmp_path)) in msg
    assert not _lock_file(tmp_path).exists()  # released


def test_heartbeat_and_writes_detect_deletion(tmp_path):
    store, said = Store(tmp_path / "study"), []
    lock = StudyLock(store, heartbeat_s=3600, on_lost=said.append).acquire()
    store.fence = lock
    lock.beat()  # still ours: rewritten
    store.write_text(store.path("before.txt"), "ok")
    _lock_file(tmp_path).unlink()
    with pytest.raises(LockLost, match="deleted or overwritten"):
        store.write_text(store.path("after.txt"), "no")
    with pytest.raises(LockLost):
        lock.beat()
    with pytest.raises(LockLost):
        store.delete_file(store.path("before.txt"))
    assert len(said) == 1 and "\n" not in said[0] and "lock" in said[0]  # told once, in one line
    assert not (tmp_path / "study" / "after.txt").exists() and (tmp_path / "study" / "before.txt").exists()
    lock.release()
    assert not _lock_file(tmp_path).exists()  # release did not recreate it


def test_heartbeat_thread_finds_takeover(tmp_path):
    """A holder stopped past the stale limit (SIGSTOP) is taken over; its next beat, from its own thread,
    reports the loss once; the new holder's lock survives the old one's release."""
    store, said = Store(tmp_path / "study"), []
    old = StudyLock(store, heartbeat_s=0.1, stale_s=60, on_lost=said.append)
    old.beat = lambda: None  # "stopped": its heartbeat thread runs but writes nothing
    old.acquire()
    _make_old(_lock_file(tmp_path))  # ... for longer than the stale limit
    new = StudyLock(Store(tmp_path / "study"), heartbeat_s=3600, stale_s=60).acquire()
    del old.beat  # "continued": the next beat is a real one
    old._beat.join(timeout=10)
    assert len(said) == 1 and f"taken over by pid {os.getpid()}" in said[0]
    with pytest.raises(LockLost):
        old.portable().check()  # what its trials and measurers check before writing
    new.portable().check()
    old.release()
    assert json.loads(_lock_file(tmp_path).read_text())["token"] == new.token
    new.release()
    assert not _lock_file(tmp_path).exists()


def test_release_never_deletes_anothers_lock(tmp_path):
    store = Store(tmp_path / "study")
    lock = StudyLock(store, heartbeat_s=3600).acquire()
    other = {"host": "elsewhere", "pid": 4242, "token": "f" * 32, "heartbeat": time.time()}
    _lock_file(tmp_path).write_text(json.dumps(other))
    lock.release()
    assert json.loads(_lock_file(tmp_path).read_text()) == other


def _record(**change) -> bytes:
    rec = {"host": "another-host", "pid": 4242, "token": "a" * 32, "heartbeat": time.time(), **change}
    return json.dumps(rec).encode()


MALFORMED = {
    "list": b"[1, 2]",
    "number": b"42",
    "heartbeat abc": _record(heartbeat="abc"),
    "heartbeat null": _record(heartbeat=None),
    "heartbeat NaN": _record(heartbeat=float("nan")),
    "pid 2**70": _record(pid=2**70),
    "pid true": _record(pid=True),
    "token missing": b'{"host": "h", "pid": 1, "heartbeat": 0}',
    "not utf-8": b"\xff\xfe\x00garbage",
    "empty": b"",
    "deep": b"[" * 100_000 + b"]" * 100_000,
    "huge": b'{"x": "' + b"y" * 200_000 + b'"}',
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_lock_is_stale_with_one_warning(tmp_path, capsys, case):
    path = _lock_file(tmp_path)
    path.parent.mkdir()
    path.write_bytes(MALFORMED[case])  # fresh: only its content makes it stale
    lock = StudyLock(Store(tmp_path / "study"), heartbeat_s=3600).acquire()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "malformed lock" in err[0] and str(path) in err[0]
    assert json.loads(path.read_text())["token"] == lock.token
    lock.release()


def test_directory_at_lock_path(tmp_path, capsys):
    path = _lock_file(tmp_path)
    path.mkdir(parents=True)  # empty: replaced
    lock = StudyLock(Store(tmp_path / "study"), heartbeat_s=3600).acquire()
    assert "it is a directory" in capsys.readouterr().err and path.is_file()
    lock.release()
    path.mkdir()
    (path / "keep.txt").write_text("x")  # not empty: refused in one line, nothing removed
    with pytest.raises(StudyLocked) as err:
        StudyLock(Store(tmp_path / "study")).acquire()
    assert "\n" not in str(err.value) and "cannot be replaced" in str(err.value)
    assert (path / "keep.txt").exists()


@pytest.mark.parametrize("kind", ["dangling symlink", "fifo"])
def test_lock_path_not_a_regular_file(tmp_path, capsys, kind):
    path = _lock_file(tmp_path)
    path.parent.mkdir()
    if kind == "fifo":
        os.mkfifo(path)  # reading it would block forever
    else:
        path.symlink_to(tmp_path / "elsewhere" / "target.json")
    lock = StudyLock(Store(tmp_path / "study"), heartbeat_s=3600).acquire()
    assert "not a regular file" in capsys.readouterr().err and path.is_file() and not path.is_symlink()
    assert not (tmp_path / "elsewhere").exists()
    lock.release()


def test_future_heartbeat_from_another_host_is_judged_by_storage_time(tmp_path):
    path = _lock_file(tmp_path)
    path.parent.mkdir()
    path.write_bytes(_record(heartbeat=time.time() + 1e9))
    with pytest.raises(StudyLocked):  # written just now by storage time: its holder may be alive
        StudyLock(Store(tmp_path / "study"), stale_s=60).acquire()
    _make_old(path, 61)  # no write for longer than the stale limit: taken over, whatever it claims
    StudyLock(Store(tmp_path / "study"), heartbeat_s=3600, stale_s=60).acquire().release()
    path.write_bytes(_record())
    future = time.time() + 1e6  # a time stamp no storage could have written yet
    os.utime(path, (future, future))
    StudyLock(Store(tmp_path / "study"), heartbeat_s=3600, stale_s=60).acquire().release()


def test_dead_holder_on_this_host_is_taken_over_at_once(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path = _lock_file(tmp_path)
    path.parent.mkdir()
    path.write_bytes(_record(host=socket.gethostname(), pid=int(dead.stdout)))
    StudyLock(Store(tmp_path / "study"), heartbeat_s=3600).acquire().release()


def test_s3_conditional_lock(capsys):
    """On the S3 server: malformed taken over, live refused, staleness by the server's clock, takeover
    fences the old holder, heartbeat finds deletion, release is conditional."""
    with s3_bucket() as uri:
        s3, key = boto3.client("s3"), "study/lock.json"
        store = Store(f"{uri}/study")
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"[1]")
        first = StudyLock(store, heartbeat_s=3600, stale_s=1.5).acquire()
        assert "malformed lock" in capsys.readouterr().err
        with pytest.raises(StudyLocked):
            StudyLock(Store(f"{uri}/study"), stale_s=1.5).acquire()
        time.sleep(2.0)  # LastModified and Date have one-second resolution
        second = StudyLock(Store(f"{uri}/study"), heartbeat_s=3600, stale_s=1.5).acquire()
        with pytest.raises(LockLost, match="taken over"):
            first.beat()
        first.release()
        second.beat()
        store.fence = second
        store.write_text(store.path("x.txt"), "ok")
        s3.delete_object(Bucket=BUCKET, Key=key)
        with pytest.raises(LockLost):
            store.write_text(store.path("y.txt"), "no")
        with pytest.raises(LockLost):
            second.beat()
        third = StudyLock(Store(f"{uri}/study"), heartbeat_s=3600).acquire()
        second.release()
        assert json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())["token"] == third.token
        third.release()
        assert s3.list_objects_v2(Bucket=BUCKET, Prefix=key)["KeyCount"] == 0


def test_release_without_delete_leaves_an_unreachable_store_at_once():
    """A run stopped by an S3 server that does not answer releases its lock without a request (each would wait
    out the client's ~6 s of retries, then fail): the heartbeat stops, the lock stays to go stale; a dead
    holder on this host is then taken over at once by the rerun, as before."""
    from support.s3_server import restart
    servers: list = []
    with s3_bucket(servers=servers) as uri:
        lock = StudyLock(Store(f"{uri}/study"), heartbeat_s=0.05).acquire()
        servers[-1].stop()
        t0 = time.perf_counter()
        lock.release(delete=False)
        assert time.perf_counter() - t0 < 0.5
        lock._beat.join(timeout=30)  # a beat under way ends with the client's retries; no new one starts
        assert not lock._beat.is_alive()
        servers.append(restart(servers[-1]))
        assert json.loads(boto3.client("s3").get_object(Bucket=BUCKET, Key="study/lock.json")["Body"].read())[
            "token"] == lock.token


def test_a_new_store_of_the_study_is_fenced_too(tmp_path):
    """The driver's report builds its own Store from the study's URI: the process-wide fence covers it."""
    from raystudy.storage import FENCES
    store = Store(tmp_path / "study")
    lock = StudyLock(store, heartbeat_s=3600).acquire()
    FENCES[store.uri] = lock
    try:
        Store(store.uri).write_text(store.path("a.txt"), "ok")
        _lock_file(tmp_path).unlink()
        with pytest.raises(LockLost):
            Store(store.uri).write_text(store.path("b.txt"), "no")
    finally:
        FENCES.pop(store.uri)
    assert (tmp_path / "study" / "a.txt").exists() and not (tmp_path / "study" / "b.txt").exists()


def _cli_study(tmp_path: Path, name: str, checkpoints: list[int]) -> Path:
    """Two circles trials of 400 epochs, measured with SAM-sharpness: long enough to be stopped mid-run."""
    block = tiny_block(factor=0.4, seed=[0, 1], shuffle_seed=0, epochs=400, checkpoints=checkpoints,
                       metrics=["sam_sharpness"], sharpness={"rhos": [0.01], "draws": 5})
    return write_study_yaml(tmp_path, name, block, analysis={"actors": 1, "cpus": 0.5})


def _written(study: Path) -> set[Path]:
    return {p for sub in ("results", "checkpoints", "report") for p in (study / sub).rglob("*")
            if p.is_file() and not p.name.startswith(".")}


@pytest.mark.slow
def test_cli_stops_in_one_line_when_its_lock_is_taken_mid_run(tmp_path):
    """The lock taken over mid-run (as after a SIGSTOP past the stale limit): the driver says so in one line
    and exits 2; its trials and measurers write nothing more; the new holder's lock stays."""
    import ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        path = _cli_study(tmp_path, "fenced", list(range(10, 400, 10)))
        study, log = tmp_path / "runs" / "fenced", tmp_path / "driver.log"
        fast = ("import sys, raystudy.lock as lock; lock.HEARTBEAT_S = 0.5; from raystudy.run import main; "
                "sys.exit(main(sys.argv[1:]))")
        with open(log, "w") as out:
            proc = subprocess.Popen([sys.executable, "-c", fast, str(path), "--no-report"], stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
                                         "PYTHONUNBUFFERED": "1"})
        deadline = time.time() + 240
        while not list((study / "results").rglob("*.parquet")):
            assert time.time() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.2)
        other = _record(token="b" * 32)
        tmp = study / ".taker.tmp"
        tmp.write_bytes(other)
        os.replace(tmp, study / "lock.json")  # the other run's takeover: one atomic replace
        time.sleep(0.3)  # a write that passed its fence check before the takeover lands now
        before = _written(study)
        assert proc.wait(timeout=60) == 2, log.read_text()
        time.sleep(2)  # trials and measurers of the dead driver: nothing more lands
        lines = [line for line in log.read_text().splitlines() if "lost the study's lock" in line]
        assert len(lines) == 1 and "taken over by pid 4242 on another-host" in lines[0], log.read_text()
        assert log.read_text().strip().splitlines()[-1] == lines[0]
        assert _written(study) <= before
        assert (study / "lock.json").read_bytes() == other
    finally:
        ray.shutdown()


def test_disk_full_at_the_lock_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    """The disk fills up as the lock is written (ENOSPC from the system call, injected): one line naming
    the lock, exit 2, before Ray starts and before anything else is written."""
    import errno

    import ray
    from raystudy.run import main

    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    path = _cli_study(tmp_path, "full", [10])
    monkeypatch.setattr(os, "link", full)
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot take the study's lock" in err and "No space left" in err, err
    assert not ray.is_initialized() and not (tmp_path / "runs" / "full" / "study.yaml").exists()
