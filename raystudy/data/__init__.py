"""Dataset releases for family C: fetch, verify and check them under a data root.

``python -m raystudy.data fetch NAME [--root DIR]`` downloads a release (cifar10, cifar100,
tinyimagenet, cifar10-c, cifar100-c, tinyimagenet-c), verifies its published MD5, extracts it
safely and records the verification; ``python -m raystudy.data check [NAME ...] [--root DIR]
[--verify]`` lists each release as present / missing / invalid (``--verify`` re-hashes the files
against the record ``fetch`` wrote). The data root is ``--root``, else ``$RAYSTUDY_DATA``, else
``~/.cache/raystudy/data``. Loading a task never re-hashes (``raystudy.tasks.check_available``
is the cheap plan-time check).
"""
from __future__ import annotations

from .download import FetchError, fetch, md5_file, read_record, safe_extract, verify
from .releases import RELEASES, Release

__all__ = ["FetchError", "RELEASES", "Release", "fetch", "md5_file", "read_record", "safe_extract", "verify"]
