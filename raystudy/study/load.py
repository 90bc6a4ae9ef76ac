"""Reading a study file: the bounded read, the strict YAML loader, validation against the schema, and the
one-line errors every problem becomes.

Bad input raises :class:`StudyError` whose message is one line naming the file and the field,
e.g. ``studies/x.yaml: blocks[1].model: unknown model 'resnet81'; known: cnn_bn, mlp, ...``.
Cost: one read of at most ``bounds.MAX_FILE_BYTES`` and a pydantic validation (milliseconds).
"""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import yaml
from pydantic import ValidationError

from raystudy.metrics import SettingError
from raystudy.study import bounds
from raystudy.study.schema import Study, Verdicts


class StudyError(Exception):
    """Bad input. ``str(err)`` is the one line a user sees: ``file: field: problem``."""



class _StudyLoader(yaml.SafeLoader):
    """SafeLoader that refuses what would silently change a study: a key given twice (YAML keeps the
    last) and aliases (``*name``: a few lines of them expand exponentially, the "billion laughs")."""

    depth = 0  # collections open around the node being composed

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"alias *{event.anchor} is not allowed in a study file "
                                              "(write the value out)", event.start_mark)
        # The composer recurses once per level: refuse deep nesting before Python's stack runs out.
        if self.depth >= bounds.MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested deeper than {bounds.MAX_DEPTH} levels",
                                              self.peek_event().start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


# YAML 1.1 (PyYAML) reads `1e-3` as a string; studies mean a number, as YAML 1.2 does.
_StudyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _parse_yaml(text: str, source: str | Path) -> dict:
    """The study file's top-level mapping; StudyError naming ``source`` (and the line) when it is not one."""
    try:
        raw = yaml.load(text, Loader=_StudyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise StudyError(f"{source}: {where}invalid YAML: {getattr(err, 'problem', err)}") from None
    except RecursionError:  # the depth limit comes first; this is the backstop
        raise StudyError(f"{source}: invalid YAML: nested too deeply") from None
    if not isinstance(raw, dict):
        raise StudyError(f"{source}: expected a mapping with name, storage and blocks at the top level")
    return raw


def load_study(path: str | Path) -> Study:
    """Read and validate a study YAML. Raises :class:`StudyError` with one line on any problem."""
    path = Path(path)
    raw = _parse_yaml(read_study_text(path), path)
    try:
        return Study.model_validate(raw)
    except ValidationError as err:
        raise StudyError(f"{path}: {_first_error(err)}") from None


def read_study_text(path: Path) -> str:
    """The study file's text, read with bounds: a regular file only (a FIFO would block for ever, /dev/zero
    never end, a directory is no file), at most ``bounds.MAX_FILE_BYTES``, UTF-8. StudyError otherwise.
    Cost: one stat and one read of at most 1 MiB."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise StudyError(f"{path}: file not found") from None
    except OSError as err:
        raise StudyError(f"{path}: cannot read: {err.strerror or err}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode) \
            else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "not a regular file"
        raise StudyError(f"{path}: is {kind}, not a regular file")
    too_big = StudyError(f"{path}: larger than {bounds.MAX_FILE_BYTES:,} bytes; a study file is a few kB")
    if info.st_size > bounds.MAX_FILE_BYTES:
        raise too_big
    try:
        # O_NONBLOCK: should the path have become a FIFO since the stat, opening it still returns at once.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            data = f.read(bounds.MAX_FILE_BYTES + 1)  # a file still growing is cut off here
        if len(data) > bounds.MAX_FILE_BYTES:
            raise too_big
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise StudyError(f"{path}: cannot read: {getattr(err, 'strerror', None) or err}") from None


def verdict_settings(text: str, source: str) -> Verdicts:
    """The ``verdicts`` section of a study file's text (the defaults when it has none), validated on its own:
    the report reads it from the study file as run, whose other fields may predate this version.
    Raises :class:`StudyError` naming ``source`` and the field."""
    raw = _parse_yaml(text, source)
    try:
        return Verdicts.model_validate(raw.get("verdicts") or {})
    except ValidationError as err:
        raise StudyError(f"{source}: verdicts.{_first_error(err)}") from None


def _first_error(err: ValidationError) -> str:
    """``blocks[1].model: unknown model 'resnet81'; known: ...`` from pydantic's first error. A value
    that fails every member of a union (``lr: [0.1, .inf]`` against ``float | list[float]``) reports
    the member that got furthest into it (the list's element), not the first member tried."""
    errors = err.errors(include_url=False)
    first = errors[0]["loc"][:1]
    e = max((x for x in errors if x["loc"][:1] == first), key=lambda x: len(x["loc"]))
    loc = list(e["loc"])
    ctx_err = (e.get("ctx") or {}).get("error")
    if isinstance(ctx_err, SettingError):
        loc.extend(ctx_err.loc)
    # Union types add the tried member type to the location ("float", "list[float]"): drop it.
    loc = [p for p in loc if not (isinstance(p, str) and re.fullmatch(r"[a-z]+\[.*\]|int|float|str|none", p))]
    # An unknown key is the user's text: repr() it unless it is a plain name, so the message stays one line.
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" if re.fullmatch(r"\w+", str(p)) else f".{p!r}"
                    for p in loc).lstrip(".") or "study"
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    elif e["type"] == "missing":
        msg = "required key missing"
    return f"{where}: {msg}"
