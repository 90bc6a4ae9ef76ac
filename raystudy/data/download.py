"""Download, verify, extract and record a dataset release (stdlib only).

``fetch`` streams the archive to ``<root>/.raystudy/downloads/<file>.part`` with progress on
stderr, checks its MD5 against the published one, extracts it member by member into a scratch
folder under the root (refusing any member that would land outside it, and links or devices),
moves the release folder into place, and writes a record of what was verified:
``<root>/.raystudy/verified/<name>.json`` (url, archive md5, time) and ``<name>.md5`` (the MD5 of
every extracted file, ``md5sum -c`` format, paths relative to the root). ``verify`` re-hashes the
extracted files against that record.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO, Iterator

from raystudy.tasks.files import DatasetError, fetch_command

from .releases import ZENODO_API, Release

_CHUNK = 1 << 20


class FetchError(RuntimeError):
    """A download, checksum or extraction failure; ``str`` is one line."""


def md5_file(path: Path) -> str:
    """Hex MD5 of a file, read in 1 MiB chunks (~0.5-1 GB/s)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def published_md5(release: Release) -> str:
    """The release's pinned MD5, else the MD5 Zenodo publishes for its file (records API)."""
    if release.md5:
        return release.md5
    if not release.zenodo_record:
        raise FetchError(f"{release.name}: no published checksum to verify against")
    url = ZENODO_API + release.zenodo_record
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            files = json.load(resp).get("files", [])
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise FetchError(f"{url}: cannot read the published checksum ({exc})") from None
    for f in files:
        if f.get("key") == release.filename and str(f.get("checksum", "")).startswith("md5:"):
            return f["checksum"][4:]
    raise FetchError(f"{url}: the record lists no md5 for {release.filename}")


def download(url: str, dest: Path, label: str, size: int | None = None, out: IO[str] = sys.stderr) -> None:
    """Stream ``url`` (http(s) or file) to ``dest``, printing progress to ``out`` about once a
    second. Raises ``FetchError`` on any network or disk failure (``dest`` is removed)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    done, last = 0, 0.0
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(dest, "wb") as f:
            total = int(resp.headers.get("Content-Length") or 0) or size
            for block in iter(lambda: resp.read(_CHUNK), b""):
                f.write(block)
                done += len(block)
                if time.monotonic() - last > 1.0:
                    last = time.monotonic()
                    pct = f" ({100 * done / total:.0f}%)" if total else ""
                    of = f" / {total / 2**20:.1f}" if total else ""
                    print(f"{label}: {done / 2**20:.1f}{of} MiB{pct}", file=out, flush=True)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        dest.unlink(missing_ok=True)
        raise FetchError(f"{url}: download failed ({getattr(exc, 'reason', exc)})") from None
    print(f"{label}: downloaded {done / 2**20:.1f} MiB", file=out, flush=True)


def _member_path(archive: Path, dest: Path, name: str) -> Path:
    """Where archive member ``name`` lands under ``dest``; ``FetchError`` if it would escape."""
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        raise FetchError(f"{archive}: member {name!r} would land outside the data root; refusing to extract")
    target = dest.joinpath(*[part for part in p.parts if part != "."])
    if os.path.commonpath([target.resolve(), dest.resolve()]) != str(dest.resolve()):
        raise FetchError(f"{archive}: member {name!r} would land outside the data root; refusing to extract")
    return target


def _members(archive: Path) -> Iterator[tuple[str, str, BinaryIO | None]]:
    """``(name, kind, stream)`` for each member, kind in {"dir", "file"}; other kinds (links,
    devices) raise ``FetchError``. Streams are valid until the next item is drawn."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise FetchError(f"{archive}: member {info.filename!r} is a link; refusing to extract")
                if info.is_dir():
                    yield info.filename, "dir", None
                else:
                    with zf.open(info) as src:
                        yield info.filename, "file", src
        return
    try:
        tf = tarfile.open(archive, "r:*")
    except tarfile.TarError as exc:
        raise FetchError(f"{archive}: not a tar or zip archive ({exc})") from None
    with tf:
        for m in tf:
            if m.isdir():
                yield m.name, "dir", None
            elif m.isreg():
                yield m.name, "file", tf.extractfile(m)
            else:
                raise FetchError(f"{archive}: member {m.name!r} is a link or device; refusing to extract")


def safe_extract(archive: Path, dest: Path) -> dict[str, str]:
    """Extract a tar (any compression) or zip ``archive`` into ``dest``, hashing as it writes.
    Returns ``{relative path: md5}`` of the extracted files. Raises ``FetchError`` for a member
    that escapes ``dest`` (absolute, ``..``), a link or device, or a damaged archive."""
    digests: dict[str, str] = {}
    try:
        for name, kind, src in _members(archive):
            target = _member_path(archive, dest, name)
            if kind == "dir":
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            h = hashlib.md5()
            with open(target, "wb") as f:
                for block in iter(lambda: src.read(_CHUNK), b""):
                    h.update(block)
                    f.write(block)
            digests[target.relative_to(dest).as_posix()] = h.hexdigest()
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise FetchError(f"{archive}: damaged archive ({exc})") from None
    return digests


def record_paths(root: Path, name: str) -> tuple[Path, Path]:
    base = root / ".raystudy" / "verified"
    return base / f"{name}.json", base / f"{name}.md5"


def read_record(root: Path, name: str) -> dict | None:
    """The verification record written by ``fetch``, or None (the files were put there by hand)."""
    path = record_paths(root, name)[0]
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def fetch(release: Release, root: Path, url: str | None = None, keep_archive: bool = False,
          out: IO[str] = sys.stderr) -> Path:
    """Download ``release`` (from ``url`` if given: a mirror, still checked against the published
    MD5), verify, extract into ``root`` and record it. Returns the release folder. An existing
    folder of that name is replaced only after the new copy is complete. Raises ``FetchError``."""
    root.mkdir(parents=True, exist_ok=True)
    work = root / ".raystudy"
    archive = work / "downloads" / release.filename
    expected = published_md5(release)
    if not (archive.is_file() and md5_file(archive) == expected):  # reuse a kept archive
        part = archive.with_name(archive.name + ".part")
        download(url or release.url, part, release.name, release.size, out)
        got = md5_file(part)
        if got != expected:
            part.unlink(missing_ok=True)
            raise FetchError(f"{url or release.url}: md5 {got} does not match the published {expected}; "
                             "download discarded")
        os.replace(part, archive)
    print(f"{release.name}: md5 {expected} verified; extracting", file=out, flush=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"extract-{release.name}-", dir=work))
    try:
        digests = safe_extract(archive, scratch)
        if not (scratch / release.folder).is_dir():
            raise FetchError(f"{archive}: no {release.folder}/ folder at the top of the archive")
        target = root / release.folder
        if target.exists():
            os.rename(target, scratch / ".replaced")
        os.rename(scratch / release.folder, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    mine = {k: v for k, v in digests.items() if k.startswith(release.folder + "/")}
    meta_path, sums_path = record_paths(root, release.name)
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    sums_path.write_text("".join(f"{md5}  {rel}\n" for rel, md5 in sorted(mine.items())))
    meta_path.write_text(json.dumps({
        "release": release.name, "url": url or release.url, "archive": release.filename,
        "archive_md5": expected, "md5_source": release.source, "folder": release.folder,
        "files": len(mine), "verified_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }, indent=1) + "\n")
    if not keep_archive:
        archive.unlink(missing_ok=True)
    return target


def verify(release: Release, root: Path) -> int:
    """Re-hash every file ``fetch`` recorded for ``release`` under ``root``; returns the number of
    files checked. Raises ``DatasetError`` naming the first missing or changed file, or
    ``FetchError`` when there is no record (files placed by hand cannot be verified)."""
    sums = record_paths(root, release.name)[1]
    if not sums.is_file():
        raise FetchError(f"{sums}: no verification record (not fetched by raystudy.data)")
    n = 0
    for line in sums.read_text().splitlines():
        md5, _, rel = line.partition("  ")
        path = root / rel
        if not path.is_file():
            raise DatasetError(path, f"missing; run: {fetch_command(release.name, root)}")
        if md5_file(path) != md5:
            raise DatasetError(path, f"md5 differs from the verified release; run: {fetch_command(release.name, root)}")
        n += 1
    return n
