"""Atomic create-if-absent and compare-and-swap of one small object (the study's ``lock.json``), per storage.

A backend has four operations, each one request or one local system call sequence:
``read()`` -> :class:`Seen` or None (absent); ``create(data)`` -> version or None (it already exists);
``replace(data, version)`` and ``delete(version)`` succeed only while the object is still the one read as
``version``. Versions: the bytes themselves on local disk, the ETag on S3, the generation on GCS.

- Local disk: create links a fully written temp file into place (``os.link`` fails if the name exists);
  replace and delete hold an ``fcntl`` guard on a hidden file beside it, check, then rename / unlink.
- S3 (boto3): ``PutObject`` with ``If-None-Match: *`` to create, ``If-Match: <etag>`` to replace, and
  ``DeleteObject`` with ``If-Match``; a single PUT is never half-visible.
- GCS: ``ifGenerationMatch`` through google-cloud-storage when it is installed; without it, a best-effort
  write-then-read-back through pyarrow (two racing runs can both win), with one warning saying so.

Ages are measured by the storage's clock where it has one (S3's ``Date`` header against ``LastModified``;
locally the guard file's freshly touched mtime against the lock's), so a holder's clock never matters.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import sys
import time
import uuid
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qs

from pyarrow import fs as pafs

from raystudy.storage import Store, first_line

MAX_BYTES = 64 * 1024  # a lock record is ~150 bytes; anything far larger is not one


@dataclass(frozen=True)
class Seen:
    """The lock object as read: ``data`` None when it is not a readable file (``problem`` says why);
    ``age_s`` seconds since it was last written, by the storage's clock."""
    data: bytes | None
    version: Any
    age_s: float
    problem: str = ""


class LocalBackend:
    def __init__(self, path: str):
        self.path = path
        parent, name = path.rsplit("/", 1)
        self.parent, self.guard = parent, f"{parent}/.{name}.guard"  # hidden: listings skip it

    @contextlib.contextmanager
    def _guarded(self):
        os.makedirs(self.parent, exist_ok=True)
        fd = os.open(self.guard, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # closing drops the flock

    def _now(self) -> float:
        """The storage's current time: touch the guard file and read its mtime back (an NFS server's clock)."""
        try:
            with self._guarded() as fd:
                os.utime(fd)
                return os.fstat(fd).st_mtime
        except OSError:
            return time.time()

    def _current(self) -> tuple[bytes | None, Any, os.stat_result, str] | None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return None
        if stat.S_ISDIR(st.st_mode):
            return None, ("dir", st.st_ino), st, "it is a directory"
        if not stat.S_ISREG(st.st_mode):  # never written by a lock: a symbolic link (perhaps dangling), a FIFO
            return None, ("other", st.st_ino, st.st_mtime_ns), st, "it is not a regular file"
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as err:
            return None, ("unreadable", st.st_ino, st.st_mtime_ns), st, f"cannot be read ({err.strerror})"
        return data, data, st, ""

    def read(self) -> Seen | None:
        cur = self._current()
        if cur is None:
            return None
        data, version, st, problem = cur
        return Seen(data, version, self._now() - st.st_mtime, problem)

    def _write_temp(self, data: bytes) -> str:
        os.makedirs(self.parent, exist_ok=True)
        tmp = f"{self.parent}/.{self.path.rsplit('/', 1)[1]}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with open(tmp, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:  # disk full: leave nothing half-written behind
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return tmp

    def _sync_dir(self) -> None:
        fd = os.open(self.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def create(self, data: bytes) -> bytes | None:
        tmp = self._write_temp(data)
        try:
            os.link(tmp, self.path)  # atomic, and fails if the name exists (a file, a link or a folder)
        except FileExistsError:
            return None
        finally:
            os.unlink(tmp)
        self._sync_dir()
        return data

    def replace(self, data: bytes, version: Any) -> bytes | None:
        with self._guarded():
            cur = self._current()
            if cur is None or cur[1] != version:
                return None
            tmp = self._write_temp(data)
            try:
                if isinstance(cur[1], tuple) and cur[1][0] == "dir":
                    os.rmdir(self.path)  # only an empty one: OSError (not empty) is the caller's to report
                os.replace(tmp, self.path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            self._sync_dir()
            return data

    def delete(self, version: Any) -> bool:
        with self._guarded():
            cur = self._current()
            if cur is None or cur[1] != version:
                return False
            os.unlink(self.path)
            return True


class S3Backend:
    def __init__(self, store: Store, path: str):
        import boto3
        from botocore.config import Config
        self.bucket, self.key = path.split("/", 1)
        opts = {k: v[-1] for k, v in parse_qs(store._query).items()}
        kwargs: dict[str, Any] = {"config": Config(retries={"max_attempts": 3, "mode": "standard"},
                                                   connect_timeout=10, read_timeout=20)}
        if "endpoint_override" in opts:  # pyarrow's URI options; otherwise boto3 reads AWS_ENDPOINT_URL itself
            host = opts["endpoint_override"]
            kwargs["endpoint_url"] = host if "://" in host else f"{opts.get('scheme', 'https')}://{host}"
        if "region" in opts:
            kwargs["region_name"] = opts["region"]
        self.client = boto3.client("s3", **kwargs)

    def _call(self, method: str, **kwargs):
        """One request; None when a precondition failed (412, or 409 for a racing conditional write), or
        the object is missing; OSError (one line) for anything else."""
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            return getattr(self.client, method)(Bucket=self.bucket, Key=self.key, **kwargs)
        except ClientError as err:
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status in (404, 409, 412) or err.response.get("Error", {}).get("Code") == "NoSuchKey":
                return None
            raise OSError(f"s3://{self.bucket}/{self.key}: {first_line(err)}") from None
        except BotoCoreError as err:
            raise OSError(f"s3://{self.bucket}/{self.key}: {first_line(err)}") from None

    def read(self) -> Seen | None:
        from botocore.exceptions import BotoCoreError
        got = self._call("get_object")
        if got is None:
            return None
        try:
            data = got["Body"].read(MAX_BYTES + 1)
        except BotoCoreError as err:  # the connection dropped mid-body
            raise OSError(f"s3://{self.bucket}/{self.key}: {first_line(err)}") from None
        date = got["ResponseMetadata"].get("HTTPHeaders", {}).get("date")
        now = parsedate_to_datetime(date).timestamp() if date else time.time()
        return Seen(data, got["ETag"], now - got["LastModified"].timestamp())

    def create(self, data: bytes) -> str | None:
        out = self._call("put_object", Body=data, IfNoneMatch="*")
        return out and out["ETag"]

    def replace(self, data: bytes, version: Any) -> str | None:
        out = self._call("put_object", Body=data, IfMatch=version)
        return out and out["ETag"]

    def delete(self, version: Any) -> bool:
        return self._call("delete_object", IfMatch=version) is not None


class GCSBackend:
    """Through google-cloud-storage (not a dependency: installed on GCS clusters). Not covered by the
    test suite, which has no GCS server."""

    def __init__(self, path: str):
        from google.api_core import exceptions
        from google.cloud import storage
        bucket, key = path.split("/", 1)
        self.bucket, self.key, self.errors = storage.Client().bucket(bucket), key, exceptions

    def _quiet(self, fn):
        try:
            return fn()
        except (self.errors.PreconditionFailed, self.errors.NotFound):
            return None
        except self.errors.GoogleAPIError as err:
            raise OSError(f"gs://{self.bucket.name}/{self.key}: {first_line(err)}") from None

    def read(self) -> Seen | None:
        blob = self._quiet(lambda: self.bucket.get_blob(self.key))
        if blob is None:
            return None
        data = self._quiet(lambda: blob.download_as_bytes(end=MAX_BYTES, if_generation_match=blob.generation))
        return None if data is None else Seen(data, blob.generation, time.time() - blob.updated.timestamp())

    def _put(self, data: bytes, generation: int):
        blob = self.bucket.blob(self.key)
        done = self._quiet(lambda: blob.upload_from_string(data, if_generation_match=generation) or True)
        return blob.generation if done else None

    def create(self, data: bytes):
        return self._put(data, 0)

    def replace(self, data: bytes, version: Any):
        return self._put(data, version)

    def delete(self, version: Any) -> bool:
        return self._quiet(lambda: self.bucket.blob(self.key).delete(if_generation_match=version) or True) is not None


class BestEffortBackend:
    """Any other pyarrow filesystem: write, then read back (two runs racing within one round trip can both
    believe they won). Used only where no conditional write is available."""

    def __init__(self, store: Store, path: str, warn: bool = True):
        self.store, self.path = store, path
        if warn:
                print(f"warning: {store.uri_of(path)}: the study lock is best effort here (no conditional writes; "
                  "install google-cloud-storage for an atomic lock on gs://)", file=sys.stderr, flush=True)

    def read(self) -> Seen | None:
        info = self.store.fs.get_file_info(self.path)
        if info.type == pafs.FileType.NotFound:
            return None
        with self.store.fs.open_input_stream(self.path) as src:
            data = src.read(MAX_BYTES + 1)
        mtime = info.mtime.timestamp() if info.mtime else time.time()
        return Seen(data, data, time.time() - mtime)

    def _write(self, data: bytes) -> bytes | None:
        with self.store.fs.open_output_stream(self.path) as out:
            out.write(data)
        seen = self.read()
        return data if seen is not None and seen.data == data else None

    def create(self, data: bytes) -> bytes | None:
        return None if self.read() is not None else self._write(data)

    def replace(self, data: bytes, version: Any) -> bytes | None:
        seen = self.read()
        return self._write(data) if seen is not None and seen.version == version else None

    def delete(self, version: Any) -> bool:
        seen = self.read()
        if seen is None or seen.version != version:
            return False
        self.store.fs.delete_file(self.path)
        return True


def backend_for(store: Store, path: str, warn: bool = True):
    """The strongest backend the store's filesystem allows for the object at ``path`` (a path on ``store.fs``);
    ``warn``: say so (one line on stderr) when that is only the best-effort one."""
    if store.local:
        return LocalBackend(path)
    if store.uri.startswith("s3://"):
        return S3Backend(store, path)
    try:
        return GCSBackend(path)
    except ImportError:
        return BestEffortBackend(store, path, warn)
