"""Storage faults as one line: the study's storage lost, its bucket gone, its disk full.

An error deep inside a run (pyarrow's OSError from S3, ENOSPC from a local write, a results/ folder that has
vanished with its bucket) says little about its cause and comes with a traceback. ``storage_fault`` decides
whether an error is the storage's doing - by its kind, and otherwise by probing the storage itself - and
words it as one line naming the location, so the CLI can stop with that line alone (exit 1 mid-run, 2 when
the storage is unusable before anything starts). Every write is atomic (``Store.write_bytes``), so whatever
was being written when storage failed is simply absent, and the rerun redoes it once storage is back.
"""
from __future__ import annotations

import errno
import uuid

from pyarrow import ArrowException

from raystudy.storage import CANNOT_REACH, Store, StorageError, first_line

PROBE_BYTES = 4096  # enough to need a block: an empty file can still be created on a full disk
RERUN = "rerun the same command once the storage is back (nothing finished is redone)"


def _disk_full(err: BaseException) -> bool:
    return (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)) or \
        "No space left on device" in str(err)


def storage_problem(store: Store, write: bool = True) -> str | None:
    """Why ``store`` cannot be used right now (one line, without the location), or None when it can: its
    bucket or folder is reachable and (with ``write``) a small hidden file can be written and deleted there.
    Cost: about four requests to an object store; a 4 KB write locally."""
    try:
        store.check_usable()
    except StorageError as err:
        return str(err).split(": ", 1)[-1]
    if not write:
        return None
    probe = store.path(f".raystudy-probe-{uuid.uuid4().hex[:8]}")
    try:
        store.write_bytes(probe, b"\0" * PROBE_BYTES)
        store.delete_file(probe)
    except (OSError, ArrowException) as err:
        return "disk full (no space left on device)" if _disk_full(err) else f"cannot write: {first_line(err)}"
    return None


def storage_fault(err: BaseException | None, store: Store, write: bool = True) -> str | None:
    """One line naming ``store``'s location when ``err`` (or, with ``err`` None, the state of the storage)
    says the storage failed; None when the storage is fine and ``err`` is some other error. ``write=False``
    probes without writing (a run that may have lost its lock writes nothing more)."""
    from raystudy.analysis.results import NotAStudyError

    if err is not None and _disk_full(err):
        problem = "disk full (no space left on device)"
    else:
        problem = storage_problem(store, write)
        if problem is None and isinstance(err, NotAStudyError):
            problem = "its results/ folder vanished during the run (deleted, or the bucket emptied?)"
    if problem is None:
        return None
    return f"storage: {store.uri}: {problem}; {RERUN}"


def unreachable(store: Store) -> str | None:
    """``storage_fault``'s line when ``store`` cannot be reached at all (no server, no network), else None
    (reachable, or failing some other way). Writes nothing. Cost: two requests to an object store while it
    answers; the S3 client's retries (0.4-3 s, see ``raystudy.storage``) when it does not."""
    line = storage_fault(None, store, write=False)
    return line if line is not None and CANNOT_REACH in line else None
