"""A study's folder on a local disk or in object storage (s3://, gs://), through pyarrow.fs.

Every write is atomic: a crash never leaves a half-written file that breaks a later read. Locally a
file is written beside its target and renamed over it (rename is atomic on POSIX); an object store
makes an object visible only once its upload completes, so there a direct write is already atomic.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

from pyarrow import fs as pafs


class Store:
    """Paths under one study root. ``Store("./runs/smoke")`` or ``Store("s3://bucket/runs/smoke")``."""

    def __init__(self, root: str):
        if "://" not in root:
            root = str(Path(root).expanduser().resolve())
        self.uri = root
        self.fs, self.root = pafs.FileSystem.from_uri(root)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def write_bytes(self, path: str, data: bytes) -> None:
        parent = path.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        if not self.local:
            with self.fs.open_output_stream(path) as out:
                out.write(data)
            return
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)

    def read_bytes(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as src:
            return src.read()

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def list(self, path: str, suffix: str = "") -> list[str]:
        """Full paths of the files directly under ``path`` ending in ``suffix`` (sorted; [] if none)."""
        if not self.exists(path):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(path, recursive=False))
        return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix))

    def list_dirs(self, path: str) -> list[str]:
        if not self.exists(path):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(path, recursive=False))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    def delete_dir(self, path: str) -> None:
        if self.exists(path):
            self.fs.delete_dir(path)
