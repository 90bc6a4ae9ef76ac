"""On-disk helpers shared by the real image datasets: where the data root is, the one-line
``DatasetError``, cheap header checks, and the decode-once cache for JPEG releases.

Loading never re-hashes a release (``python -m raystudy.data check --verify`` does): tests and
offline users point ``data_root`` at files they generated. What loading does check is that each
file exists, is complete and has the expected layout, and it says which file is wrong in one line.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

DEFAULT_ROOT = "~/.cache/raystudy/data"
ENV_ROOT = "RAYSTUDY_DATA"
# Bump when the decoded-array layout changes, so stale caches are never read.
_CACHE_FORMAT = 1


class DatasetError(ValueError):
    """A dataset file that is missing, truncated or malformed: ``str`` is one line naming ``path``.

    For a missing release the message ends with the command that fetches it.
    """

    def __init__(self, path: str | os.PathLike, message: str):
        self.path = str(path)
        self.message = message
        super().__init__(f"{self.path}: {message}")


def resolve_root(data_root: str | os.PathLike | None) -> Path:
    """The data root: ``data_root`` if given, else ``$RAYSTUDY_DATA``, else ``~/.cache/raystudy/data``
    (``~`` expanded, made absolute; nothing is created)."""
    chosen = data_root if data_root not in (None, "") else os.environ.get(ENV_ROOT) or DEFAULT_ROOT
    return Path(chosen).expanduser().absolute()


def fetch_command(release: str, root: Path) -> str:
    return f"python -m raystudy.data fetch {release} --root {root}"


def missing(path: Path, release: str, root: Path) -> DatasetError:
    return DatasetError(path, f"missing; run: {fetch_command(release, root)}")


def require_dir(path: Path, release: str, root: Path) -> Path:
    if not path.is_dir():
        raise missing(path, release, root)
    return path


def require_file(path: Path, release: str, root: Path) -> int:
    """Raise unless ``path`` is a non-empty file; returns its size in bytes."""
    if not path.is_file():
        raise missing(path, release, root)
    size = path.stat().st_size
    if size == 0:
        raise DatasetError(path, "empty file (truncated download?)")
    return size


def check_pickle(path: Path, release: str, root: Path) -> None:
    """Cheap completeness test of a pickle: its first byte opens one (PROTO for protocol 2+, MARK
    or EMPTY_DICT/LIST for the Python 2 era protocols 0 and 1) and its last byte is STOP ('.'),
    which a truncated file almost never ends with. Reads two bytes."""
    size = require_file(path, release, root)
    with open(path, "rb") as f:
        head = f.read(1)
        f.seek(size - 1)
        tail = f.read(1)
    if head not in (b"\x80", b"(", b"}", b"]"):
        raise DatasetError(path, "not a Python pickle (bad first byte)")
    if tail != b".":
        raise DatasetError(path, "truncated pickle (no STOP opcode at the end)")


def npy_header(path: Path, release: str, root: Path) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` of a ``.npy`` file from its header, after checking that the file holds
    exactly the bytes the header promises (so a truncated download is caught). Reads ~128 bytes."""
    size = require_file(path, release, root)
    try:
        # mmap reads the header only; a file shorter than its header promises fails here.
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # bad magic, bad header, short file: one line whatever numpy raises
        raise DatasetError(path, f"not a complete .npy file ({exc})") from None
    shape, dtype, offset, fortran = arr.shape, arr.dtype, arr.offset, not arr.flags.c_contiguous
    del arr
    if fortran or dtype.hasobject:
        raise DatasetError(path, "unexpected .npy layout (Fortran order or object dtype)")
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size != expected:
        raise DatasetError(path, f"file has {size} bytes, its header promises {expected} (truncated or corrupt)")
    return tuple(shape), dtype


def decode_images(paths: Sequence[Path], size: int, threads: int | None = None) -> np.ndarray:
    """Decode image files into one uint8 array ``(N, size, size, 3)``: RGB, greyscale and palette
    images converted to RGB as PIL does. Raises ``DatasetError`` naming the first file that does not
    decode or is not ``size x size``. Cost: one PIL decode per file, on a thread pool (PIL releases
    the GIL while decoding); ~0.1-0.3 ms per 64x64 JPEG per core."""
    from PIL import Image

    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)

    def one(i: int) -> None:
        try:
            with Image.open(paths[i]) as img:
                arr = np.asarray(img.convert("RGB"))
        except FileNotFoundError:
            raise DatasetError(paths[i], "missing (listed in the release's index)") from None
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
            raise DatasetError(paths[i], f"cannot decode image ({exc})") from None
        if arr.shape != (size, size, 3):
            raise DatasetError(paths[i], f"image is {arr.shape[1]}x{arr.shape[0]}, expected {size}x{size}")
        out[i] = arr

    workers = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, range(len(paths))))  # list() re-raises the first failure
    return out


def cache_dir(root: Path) -> Path:
    """Where decoded arrays live: ``<root>/.raystudy/decoded`` when the root is writable, else
    ``~/.cache/raystudy/decoded/<hash of the root path>`` (a read-only shared data root)."""
    local = root / ".raystudy" / "decoded"
    try:
        local.mkdir(parents=True, exist_ok=True)
        if os.access(local, os.W_OK):
            return local
    except OSError:
        pass
    tag = hashlib.sha1(str(root).encode()).hexdigest()[:12]
    fallback = Path("~/.cache/raystudy/decoded").expanduser() / tag
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def sources_key(paths: Sequence[Path], base: Path) -> str:
    """A digest of ``paths``' names (relative to ``base``), sizes and modification times, one
    ``stat`` each. Callers pass the index files and the *folders* that hold the images: adding,
    removing, renaming or replacing a file (extraction, ``mv``, ``rsync``) changes its folder's
    mtime, so a few hundred ``stat`` calls stand for 110,000. Overwriting a file in place (same
    name, same inode) is not seen: delete the cache folder to force a re-decode."""
    h = hashlib.sha1(f"format {_CACHE_FORMAT}\n".encode())
    for p in paths:
        try:
            st = p.stat()
        except FileNotFoundError:
            raise DatasetError(p, "missing (listed in the release's index)") from None
        h.update(f"{p.relative_to(base)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def cached_arrays(
    directory: Path, tag: str, key: str, build: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Arrays stored under ``directory/<tag>@<key>/<name>.npy``, built by ``build()`` on a miss.

    The cache entry is written to a temporary folder and renamed into place, so concurrent trials
    on one node never read a half-written entry (the loser of a race discards its copy). Entries of
    the same ``tag`` with another key (stale sources) are removed after a successful write.
    """
    entry = directory / f"{tag}@{key}"
    if (entry / "complete").exists():
        try:
            # Copy-on-write maps: nothing is read until used, trials on one node share the page
            # cache, and the arrays are writable for torch.from_numpy (writes stay private).
            return {p.stem: np.load(p, mmap_mode="c") for p in sorted(entry.glob("*.npy"))}
        except (OSError, ValueError):  # damaged cache entry: rebuild it
            shutil.rmtree(entry, ignore_errors=True)
    arrays = build()
    tmp = Path(tempfile.mkdtemp(prefix=f".{tag}-", dir=directory))
    for name, arr in arrays.items():
        np.save(tmp / f"{name}.npy", arr)
    (tmp / "complete").write_text("ok\n")
    tmp.chmod(0o755)  # mkdtemp makes it private; others sharing the data root may read the cache
    try:
        os.rename(tmp, entry)
    except OSError:  # another process renamed its copy first: same content, keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    for stale in directory.glob(f"{tag}@*"):
        if stale != entry and stale.is_dir() and not stale.name.startswith("."):
            shutil.rmtree(stale, ignore_errors=True)
    return arrays
