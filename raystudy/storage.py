"""A study's folder on a local disk or in object storage (s3://, gs://), through one pyarrow filesystem.

Every stage reaches storage through a :class:`Store`: training writes checkpoints, the measuring actors
write result rows, Ray Tune and Train keep their state under ``<study>/ray/`` (given ``Store.fs``), the
report reads the rows and writes its page, and a resumed run lists what exists. A process that needs the
store rebuilds it from its URI (``Store(store.uri)``), so the URI is all that travels between processes;
credentials and endpoints come from each process's environment (``AWS_*``, Google's default
credentials), or from options in the URI's query (``s3://bucket/x?endpoint_override=host:9000``).

An S3 request is retried explicitly (``s3_retries``): AWS's standard strategy, ``RAYSTUDY_S3_ATTEMPTS``
attempts (default 3) with jittered exponential backoff (up to 1 s, then 2 s), and ``RAYSTUDY_S3_CONNECT_TIMEOUT``
seconds (default 2) to connect. Left to itself, pyarrow's filesystem from a URI retries every retryable error
every 0.2 s for 6 s, without backoff: 31 requests to a server that answers 503 SlowDown (asking clients to slow
down), and 6 s on every request to an endpoint that has gone.

Every write is atomic: a crash never leaves a half-written file that breaks a later read. Locally a
file is written beside its target under a hidden name and renamed over it (rename is atomic on POSIX);
an object store makes an object visible only once its upload completes (on S3 a single PUT for a file
smaller than one upload part, a multipart upload completed only after every part went up), so there a
direct write is already atomic.
"""
from __future__ import annotations

import os
import posixpath
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pyarrow import ArrowException
from pyarrow import fs as pafs

REMOTE_SCHEMES = ("s3", "gs", "gcs")  # what pyarrow.fs reaches without extra native libraries
# Error words of an object store that mean "who you are may not do this" (AWS SDK and Google's client).
_DENIED = ("ACCESS_DENIED", "INVALID_ACCESS_KEY", "SIGNATURE_DOES_NOT_MATCH", "HTTP status 403",
           "PERMISSION_DENIED", "UNAUTHENTICATED", "access token", "credentials")
# How a storage check words an object store that does not answer (no server, no network): raystudy.run then
# leaves the study's lock to go stale rather than wait out the client's retries to delete it.
CANNOT_REACH = "cannot reach bucket"
# Environment variables that tune every S3 filesystem this process builds (see s3_retries), and their defaults.
ATTEMPTS_ENV, CONNECT_ENV = "RAYSTUDY_S3_ATTEMPTS", "RAYSTUDY_S3_CONNECT_TIMEOUT"
ATTEMPTS = 3  # AWS's standard-mode default: two retries, after up to 1 s and up to 2 s (full jitter)
CONNECT_S = 2.0  # seconds: survives one lost SYN (Linux resends it after 1 s), where the SDK's 1 s would not
CHECK_S = 20  # how long the storage check waits for an object store that does not answer, seconds
# Root URI -> the fence of the study this process runs: every Store of that root built in this process (the
# report's too) checks it before writing, like ``Store.fence``. Set and cleared by ``raystudy.run``.
FENCES: dict[str, object] = {}


class StorageError(ValueError):
    """A storage location that cannot be used; ``str(err)`` is one line: ``<location>: <problem>``."""


def first_line(err: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (pyarrow's can run to dozens of lines), at most
    ``limit`` characters."""
    line = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _setting(name: str, default: float, location: str, kind: type = float) -> float:
    """The number in environment variable ``name`` (``default`` when unset), at least 1 (``kind`` int) or
    above 0; StorageError naming ``location`` and the variable otherwise."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = 0
    if value <= 0 or value != value or value == float("inf"):
        want = "a whole number of attempts, 1 or more" if kind is int else "a number of seconds above 0"
        raise StorageError(f"{location}: {name}={raw!r}: want {want}")
    return value


def s3_retries(fs: pafs.S3FileSystem, location: str) -> pafs.S3FileSystem:
    """``fs`` rebuilt with an explicit retry strategy and connect timeout (see the module's docstring): every
    option its URI set, and the region pyarrow looked up, kept. ``location`` names the store in the
    StorageError an unusable ``RAYSTUDY_S3_*`` value raises. Cost: no request.

    A refused connection then fails in 0.4-3 s instead of 6 s; throttling and 5xx are retried with backoff
    (3 requests, not 31 in 6 s). The result pickles with its retry strategy (``RetryingS3FileSystem``), so the
    copies Ray ships to Tune's and Train's processes retry as this one does."""
    attempts = int(_setting(ATTEMPTS_ENV, ATTEMPTS, location, kind=int))
    connect = _setting(CONNECT_ENV, CONNECT_S, location)
    options = fs.__reduce__()[1][0]  # the keyword arguments that rebuild this filesystem
    options.update(connect_timeout=connect)
    return _retrying_s3(options, attempts)


class RetryingS3FileSystem(pafs.S3FileSystem):
    """pyarrow's S3 filesystem with AWS's standard retry strategy, ``attempts`` requests at most, that keeps it
    when pickled: pyarrow's own pickled form carries every option but the retry strategy, and Ray pickles
    ``Store.fs`` into every process that handles Tune's and Train's state."""

    attempts: int

    def __reduce__(self):
        return _retrying_s3, (super().__reduce__()[1][0], self.attempts)


def _retrying_s3(options: dict, attempts: int) -> RetryingS3FileSystem:
    fs = RetryingS3FileSystem(**options, retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=attempts))
    fs.attempts = attempts
    return fs


def _is_local(location: str) -> bool:
    return "://" not in location or location.startswith("file://")


class Store:
    """Paths under one root, on the filesystem the root's URI names. Building one touches no network,
    except that pyarrow looks up an S3 bucket's region when none is configured (AWS_REGION, ?region=).

    ``Store("./runs/smoke")``, ``Store("s3://bucket/runs/smoke")``, ``Store("gs://bucket/runs/smoke")``.
    ``fs`` is the pyarrow filesystem and ``root`` the root's path on it; every path a method takes or
    returns is a path on ``fs`` (no scheme: ``bucket/runs/smoke/results/...`` or ``/abs/runs/...``).
    Raises StorageError for a scheme pyarrow.fs cannot reach here, or an unusable ``RAYSTUDY_S3_*`` setting.
    """

    # Checked before every write and delete: an object whose ``check()`` raises (raystudy.lock.LockLost)
    # once this run has lost its study's lock, so a run that lost it writes nothing more. None: unfenced.
    fence = None

    def __init__(self, location: str | Path):
        location = str(location)
        if _is_local(location):
            local = location[len("file://"):] if location.startswith("file://") else location
            self.uri = str(Path(local).expanduser().resolve())
            self._scheme, self._query = "", ""
            self.fs, self.root = pafs.LocalFileSystem(), self.uri
        else:
            parts = urlsplit(location)
            if parts.scheme not in REMOTE_SCHEMES:
                raise StorageError(f"{location}: unsupported scheme {parts.scheme!r} (use a local path, s3:// "
                                   "or gs://)")
            if not parts.netloc:
                raise StorageError(f"{location}: no bucket named ({parts.scheme}://BUCKET/path)")
            if ".." in parts.path.split("/") or "." in parts.path.split("/"):
                raise StorageError(f"{location}: '.' and '..' are not allowed in an object store path")
            self.uri = urlunsplit(parts._replace(path=parts.path.rstrip("/"), fragment=""))
            self._scheme, self._query = parts.scheme, parts.query
            opened = self.uri
            if parts.scheme == "s3" and "allow_delayed_open" not in parts.query:
                # A file smaller than one upload part then goes up as a single PUT, not a multipart upload.
                opened = f"{self.uri}{'&' if parts.query else '?'}allow_delayed_open=true"
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(opened)
            except (OSError, ArrowException) as err:  # e.g. a bucket's region looked up and not found
                raise StorageError(f"{location}: cannot open: {first_line(err)}") from None
            if parts.scheme == "s3":
                self.fs = s3_retries(self.fs, location)
            self.root = self.root.rstrip("/")

    @property
    def local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def name(self) -> str:
        """The root's last path segment (the study's name for a study store)."""
        return self.root.rsplit("/", 1)[-1]

    def path(self, *parts: str) -> str:
        """A path on ``fs`` under the root: ``store.path("a", "b")`` is ``<root>/a/b``."""
        return "/".join([self.root, *parts])

    def uri_of(self, path: str) -> str:
        """The full URI of a path on ``fs`` (a plain absolute path for a local store), for tools that
        open locations themselves; the root URI's query options are kept."""
        if self.local:
            return path
        query = f"?{self._query}" if self._query else ""
        return f"{self._scheme}://{path}{query}"

    def child(self, name: str) -> "Store":
        """The Store of folder ``name`` directly under the root. Raises StorageError unless ``name`` is
        one plain path segment, so the child lies strictly inside this root (a name like ``..`` would not)."""
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise StorageError(f"{self.uri}: {name!r} is not a folder name inside it")
        if self.local:
            return Store(os.path.join(self.uri, name))
        parts = urlsplit(self.uri)
        return Store(urlunsplit(parts._replace(path=f"{parts.path}/{name}")))

    def inside(self, path: str) -> bool:
        """Whether ``path`` lies strictly inside the root (not the root itself, never above it)."""
        norm = posixpath.normpath(path)
        return norm == path.rstrip("/") and norm.startswith(self.root + "/")

    # --- reading and writing ----------------------------------------------------------------------

    def write_bytes(self, path: str, data: bytes) -> None:
        """Atomically create or replace the file at ``path`` (parent folders are created)."""
        self._fenced()
        if not self.local:
            with self.fs.open_output_stream(path) as out:
                out.write(data)
            return
        parent, name = path.rsplit("/", 1)
        os.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/.{name}.{uuid.uuid4().hex[:8]}.tmp"  # hidden: listings skip files in flight
        try:
            with open(tmp, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def _fenced(self) -> None:
        fence = self.fence if self.fence is not None else FENCES.get(self.uri)
        if fence is not None:
            fence.check()

    def write_text(self, path: str, text: str) -> None:
        self.write_bytes(path, text.encode())

    def read_bytes(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as src:
            return src.read()

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def is_dir(self, path: str) -> bool:
        return self.fs.get_file_info(path).type == pafs.FileType.Directory

    def files(self, path: str, suffix: str = "", recursive: bool = False) -> list[pafs.FileInfo]:
        """Files under ``path`` ending in ``suffix``, sorted by path ([] if none). Files whose path below
        ``path`` has a part starting with "." or "_" are skipped: that is how writers name files in
        flight. Each FileInfo has ``path``, ``size`` and ``mtime_ns``. Cost: one listing (object stores:
        one request per 1,000 objects)."""
        selector = pafs.FileSelector(path, recursive=recursive, allow_not_found=True)
        base = len(path.rstrip("/")) + 1
        return sorted((i for i in self.fs.get_file_info(selector)
                       if i.type == pafs.FileType.File and i.path.endswith(suffix)
                       and not any(p.startswith((".", "_")) for p in i.path[base:].split("/"))),
                      key=lambda i: i.path)

    def list(self, path: str, suffix: str = "", recursive: bool = False) -> list[str]:
        """Paths of the files under ``path`` ending in ``suffix`` (sorted; [] if none); see ``files``."""
        return [i.path for i in self.files(path, suffix, recursive)]

    def list_dirs(self, path: str) -> list[str]:
        """Names of the folders directly under ``path`` (sorted; [] if none)."""
        selector = pafs.FileSelector(path, recursive=False, allow_not_found=True)
        return sorted(i.base_name for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.Directory)

    def delete_dir(self, path: str) -> None:
        """Delete the folder at ``path`` and everything in it. Refuses (ValueError) any path that is not
        strictly inside the root: deleting never reaches above the study."""
        if not self.inside(path):
            raise ValueError(f"{path}: refusing to delete a folder outside {self.root}")
        self._fenced()
        if not self.exists(path):
            return
        if self._scheme in ("gs", "gcs"):  # pyarrow's GCS delete_dir fails on a folder without a marker object
            self.fs.delete_dir_contents(path, missing_dir_ok=True)
        else:  # S3's delete_dir_contents would leave a marker behind, so the folder would still exist
            self.fs.delete_dir(path)

    def delete_file(self, path: str) -> None:
        """Delete one file strictly inside the root (ValueError otherwise); a missing file is not an error."""
        if not self.inside(path):
            raise ValueError(f"{path}: refusing to delete a file outside {self.root}")
        self._fenced()
        try:
            self.fs.delete_file(path)
        except FileNotFoundError:
            pass

    def move(self, src: str, dst: str) -> None:
        """Rename a file inside the root (an object store copies, then deletes)."""
        if not (self.inside(src) and self.inside(dst)):
            raise ValueError(f"{src} -> {dst}: refusing to move a file across the root {self.root}")
        self._fenced()
        self.fs.move(src, dst)

    def tail(self, path: str, n: int) -> bytes:
        """The last ``n`` bytes of a file (fewer if it is shorter): one ranged read, however large the file."""
        with self.fs.open_input_file(path) as f:
            size = f.size()
            f.seek(max(size - n, 0))
            return f.read()

    def copy_dir_to_local(self, path: str, dest: str | Path) -> Path:
        """Copy the files directly under ``path`` into the local folder ``dest`` (created); returns it."""
        dest = Path(dest).expanduser().resolve()
        dest.mkdir(parents=True, exist_ok=True)
        for src in self.list(path):
            Store(dest).write_bytes(str(dest / src.rsplit("/", 1)[1]), self.read_bytes(src))  # atomic, as here
        return dest

    # --- checks before anything starts ------------------------------------------------------------

    def check_usable(self, label: str | None = None) -> None:
        """Raise StorageError (one line: ``<label or root URI>: <problem>``) unless the root can be
        written: locally, no part of it is a file and its nearest existing folder accepts a new entry
        (probed by making and removing an empty folder: permission bits say nothing for root, /proc or a
        read-only mount); in an object store, the bucket exists, these credentials may use it and the root
        is not an object. Writes nothing that outlasts the call. Cost: two requests to an object store."""
        problem = self._local_problem() if self.local else self._bucket_problem()
        if problem:
            raise StorageError(f"{label or self.uri}: {problem}")

    def _local_problem(self) -> str | None:
        here = Path(self.root)
        while not here.exists():
            if here.is_symlink():  # a dangling link: writing through it fails further down
                return f"{here} is a broken symbolic link"
            here = here.parent
        if not here.is_dir():
            return f"{here} is a file, not a folder"
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".raystudy-probe-", dir=here))
        except OSError as err:
            return f"cannot write in {here}: {err.strerror or first_line(err)}"
        return None

    def _bucket_problem(self) -> str | None:
        bucket, fs = self.root.split("/", 1)[0], self.fs
        if self._scheme != "s3" and "retry_limit_seconds" not in self._query:
            # Google's client retries for 15 minutes by default: a missing token would hang the check.
            fs = pafs.FileSystem.from_uri(f"{self.uri}{'&' if self._query else '?'}retry_limit_seconds={CHECK_S}")[0]
        try:
            if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                return f"bucket {bucket!r} does not exist"
            if fs.get_file_info(self.root).type == pafs.FileType.File:
                return f"{self.uri_of(self.root)} is an object, not a folder"
        except (OSError, ArrowException) as err:
            why = first_line(err)
            if any(word in why for word in _DENIED):
                return f"access to bucket {bucket!r} denied (no credentials, or they do not grant it): {why}"
            return f"{CANNOT_REACH} {bucket!r}: {why}"
        return None


def dangling_link(location: str) -> str | None:
    """The first component of local path ``location``, as written (links not resolved), that is a
    symbolic link whose target does not exist; None if there is none. Cost: one lstat per component."""
    local = location[len("file://"):] if location.startswith("file://") else location
    path = Path(os.path.abspath(os.path.expanduser(local)))
    for part in reversed([path, *path.parents]):
        if part.is_symlink() and not part.exists():
            return str(part)
    return None


def study_store(storage: str | Path, name: str) -> Store:
    """The checked Store of study ``name`` under the storage root ``storage`` (a local path, s3:// or
    gs:// URI). Raises StorageError (one line: ``<storage>: <problem>``) when the scheme is unknown, the
    bucket is missing or refused, the path is a file or cannot be written, or ``name`` would put the
    study anywhere but strictly inside ``storage``. Writes nothing. Cost: see ``Store.check_usable``."""
    link = dangling_link(str(storage)) if _is_local(str(storage)) else None
    if link:  # Store resolves links: it would create the missing target's folders wherever the link points
        raise StorageError(f"{storage}: {link} is a broken symbolic link (its target does not exist)")
    root = Store(storage)
    try:
        study = root.child(name)
    except StorageError:
        raise StorageError(f"{storage}: study name {name!r} does not name a folder inside it") from None
    study.check_usable(label=str(storage))
    return study
