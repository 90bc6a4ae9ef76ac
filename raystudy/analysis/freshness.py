"""Is the report current? The report records what it was built from (``report/built_from.json``): a
fingerprint of every result file (path, size, modification time), the study file as run and the raystudy
version, and the PNGs it drew beside the page (none unless asked for). A rerun with nothing to train or measure
compares fingerprints and skips rebuilding a current report (seconds instead of ~30 s); a report without PNGs is
not current for a run that asks for them, while one with PNGs stays current for a run that does not (they are
only more than was asked). Cost: one listing of results/ and one small read."""
from __future__ import annotations

import hashlib
import json

import raystudy
from raystudy.layout import report_path, results_dir, study_file
from raystudy.storage import Store

BUILT_FROM = "built_from.json"


def fingerprint(store: Store) -> str:
    """sha256 over the study's result files (relative path, size, mtime in ns), its study.yaml and the
    raystudy version: any row written, replaced or removed, any edit of the study file (its verdict
    settings shape the report) or a new version changes it."""
    h = hashlib.sha256(raystudy.__version__.encode())
    root = results_dir(store)
    if store.is_dir(root):
        for info in sorted(store.files(root, ".parquet", recursive=True), key=lambda i: i.path):
            h.update(f"{info.path[len(root):]}\0{info.size}\0{info.mtime_ns}\n".encode())
    study = study_file(store)
    if store.exists(study):
        h.update(hashlib.sha256(store.read_bytes(study)).digest())
    return h.hexdigest()


def record_built_from(store: Store, print_: str, pngs: list[str] | None = None) -> None:
    """Write report/built_from.json for a report just built from rows with fingerprint ``print_``; ``pngs``: the
    file names of the PNGs it drew beside the page (None when none were asked for; [] when asked, but the page
    has no chart)."""
    store.write_text(report_path(store, BUILT_FROM), json.dumps({"fingerprint": print_,
                                                                   "raystudy": raystudy.__version__,
                                                                   "pngs": pngs}))


def built_from(store: Store) -> dict:
    """report/built_from.json as recorded ({} when there is none or it cannot be read): ``fingerprint``,
    ``raystudy`` and ``pngs`` (the PNG file names drawn, or None: no PNGs asked for, or a record from before
    PNGs were recorded)."""
    try:
        recorded = json.loads(store.read_bytes(report_path(store, BUILT_FROM)))
    except (OSError, ValueError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def report_is_current(store: Store, pngs: bool = False) -> bool:
    """True when report/index.html exists and was built from exactly the rows and study file stored now and,
    with ``pngs``, drew its PNGs too."""
    try:
        if not store.exists(report_path(store, "index.html")):
            return False
    except OSError:
        return False
    recorded = built_from(store)
    if pngs and recorded.get("pngs") is None:
        return False
    return recorded.get("fingerprint") == fingerprint(store)
