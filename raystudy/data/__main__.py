"""``python -m raystudy.data fetch|check``: get and check the image dataset releases.

    python -m raystudy.data fetch NAME [NAME ...] [--root DIR] [--url URL] [--keep-archive] [--force]
    python -m raystudy.data check [NAME ...] [--root DIR] [--verify]

``fetch`` skips a release that is present and was verified by an earlier fetch (``--force``
fetches again); ``--url`` downloads from a mirror (one NAME), still checked against the published
MD5. ``check`` looks at file existence, sizes and headers (fast); ``--verify`` also re-hashes
every file against the record ``fetch`` wrote (minutes for the -C sets). Without NAMEs, ``check``
lists every release.

Exit codes: 0 ok; 1 a download, checksum or extraction failed, or ``check`` found a release
invalid (or a NAMEd one missing); 2 bad input (unknown name, bad root, bad option). Every failure
is one line on stderr.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import IO, Sequence

from raystudy.tasks.datasets import check_release
from raystudy.tasks.files import DatasetError, fetch_command, resolve_root

from .download import FetchError, fetch, read_record, verify
from .releases import RELEASES

PROG = "python -m raystudy.data"


class _BadInput(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage + message)
        raise _BadInput(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Fetch and check raystudy's image dataset releases.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    f = sub.add_parser("fetch", help="download, verify and extract releases")
    f.add_argument("names", nargs="+", metavar="NAME", help=", ".join(RELEASES))
    f.add_argument("--root", help="data root (default: $RAYSTUDY_DATA or ~/.cache/raystudy/data)")
    f.add_argument("--url", help="download from this mirror URL instead (one NAME; md5 still checked)")
    f.add_argument("--keep-archive", action="store_true", help="keep the archive under <root>/.raystudy/downloads")
    f.add_argument("--force", action="store_true", help="fetch even if present and verified")
    c = sub.add_parser("check", help="list releases: present / missing / invalid")
    c.add_argument("names", nargs="*", metavar="NAME", help=", ".join(RELEASES))
    c.add_argument("--root", help="data root (default: $RAYSTUDY_DATA or ~/.cache/raystudy/data)")
    c.add_argument("--verify", action="store_true", help="re-hash files against the fetch record")
    return p


def _root(arg: str | None, must_exist: bool) -> Path:
    root = resolve_root(arg)
    if root.exists() and not root.is_dir():
        raise _BadInput(f"{root}: data root is not a directory")
    if must_exist and not root.exists():
        raise _BadInput(f"{root}: data root does not exist (nothing fetched yet? "
                        f"run: {PROG} fetch NAME --root {root})")
    return root


def _names(names: Sequence[str]) -> list[str]:
    unknown = [n for n in names if n not in RELEASES]
    if unknown:
        raise _BadInput(f"unknown dataset {unknown[0]!r}; known: {', '.join(RELEASES)}")
    return list(names)


def _fetch(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    names = _names(args.names)
    if args.url and len(names) != 1:
        raise _BadInput("--url needs exactly one NAME")
    root = _root(args.root, must_exist=False)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _BadInput(f"{root}: cannot create the data root ({exc.strerror})") from None
    for name in names:
        if not args.force and read_record(root, name) is not None:
            try:
                folder = check_release(name, str(root))
                print(f"{name}: already present and verified at {folder} (--force to fetch again)", file=out)
                continue
            except DatasetError:
                pass  # recorded but damaged since: fetch again
        folder = fetch(RELEASES[name], root, url=args.url, keep_archive=args.keep_archive, out=err)
        check_release(name, str(root))  # the extracted files have the layout the loaders read
        print(f"{name}: fetched, verified and extracted to {folder}", file=out)
    return 0


def _check(args: argparse.Namespace, out: IO[str]) -> int:
    names = _names(args.names) or list(RELEASES)
    root = _root(args.root, must_exist=True)
    status = 0
    for name in names:
        try:
            folder = check_release(name, str(root))
        except DatasetError as exc:
            if not (root / RELEASES[name].folder).exists():
                print(f"{name:<15} missing   run: {fetch_command(name, root)}", file=out)
                status = status or (1 if args.names else 0)
            else:
                print(f"{name:<15} invalid   {exc}", file=out)
                status = 1
            continue
        record = read_record(root, name)
        note = f"verified by fetch {record['verified_at']}" if record else "not fetched by raystudy.data"
        if args.verify:
            try:
                note += f"; re-hashed {verify(RELEASES[name], root)} files: ok"
            except DatasetError as exc:
                print(f"{name:<15} invalid   {exc}", file=out)
                status = 1
                continue
            except FetchError:
                note += "; cannot re-hash (no fetch record)"
        print(f"{name:<15} present   {folder} ({note})", file=out)
    return status


def main(argv: Sequence[str] | None = None, out: IO[str] = sys.stdout, err: IO[str] = sys.stderr) -> int:
    """Run the command line; returns the exit code (0 ok, 1 failed, 2 bad input)."""
    try:
        args = _parser().parse_args(argv)
        return _fetch(args, out, err) if args.command == "fetch" else _check(args, out)
    except _BadInput as exc:
        print(f"{PROG}: {exc}", file=err)
        return 2
    except (FetchError, DatasetError) as exc:
        print(f"{PROG}: {exc}", file=err)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=err)
        return 130
    except OSError as exc:  # disk full, permissions: still one line
        print(f"{PROG}: {exc.filename or ''}: {exc.strerror or exc}", file=err)
        return 1


if __name__ == "__main__":
    sys.exit(main())
