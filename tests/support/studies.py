"""Study files and the run CLI for tests: a study is a dict written with ``yaml.safe_dump``, so a test names only
what it changes (``tiny_block(epochs=24, seed=[0, 1])``) instead of repeating a YAML snippet.

The blocks are the fastest real studies there are: ``tiny_block`` a 2-D circles classifier (an MLP with 8 hidden
units, ~0.1 s an epoch on one core), ``function_block`` a sphere regression on 64 points, ``digits_block`` sklearn's
8x8 digits on a small BatchNorm CNN."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

CIRCLES: dict[str, Any] = dict(name="c", family="circles", task="circles", factor=0.5, model="mlp",
                               model_args={"hidden": [8]}, lr=0.05, batch_size=10, epochs=2)
SPHERE: dict[str, Any] = dict(name="fn", family="functions", task="sphere", model="mlp",
                              model_args={"hidden": [8]}, optimizer="adam", lr=0.01, epochs=3, n_train=64,
                              n_test=64)

DIGITS: dict[str, Any] = dict(name="digits", family="images", task="digits", model="cnn_bn", model_args={"width": 4},
                              lr=0.05, batch_size=128, epochs=2)


def tiny_block(**overrides: Any) -> dict[str, Any]:
    """The circles block (a fresh dict) with ``overrides`` set; keys keep the order a person would write."""
    return {**copy.deepcopy(CIRCLES), **overrides}


def function_block(**overrides: Any) -> dict[str, Any]:
    """The sphere-regression block (a fresh dict) with ``overrides`` set."""
    return {**copy.deepcopy(SPHERE), **overrides}


def digits_block(**overrides: Any) -> dict[str, Any]:
    """The 8x8-digits block (a BatchNorm CNN of width 4; ~1 s an epoch on one core) with ``overrides`` set."""
    return {**copy.deepcopy(DIGITS), **overrides}


def study_dict(name: str, *blocks: dict[str, Any], storage: str, **top: Any) -> dict[str, Any]:
    """The study file's content: ``name``, ``storage``, the top-level fields ``top`` (analysis, max_failures,
    ...) and ``blocks`` (one ``tiny_block()`` when none is given)."""
    return {"name": name, "storage": storage, **top, "blocks": list(blocks) or [tiny_block()]}


class _Plain(yaml.SafeDumper):
    """Writes a value shared by two blocks out twice: study files refuse YAML aliases (``&id001``/``*id001``)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def write_study_yaml(directory: Path, name: str = "study", *blocks: dict[str, Any], storage: str | None = None,
                     **top: Any) -> Path:
    """Write ``<directory>/<name>.yaml`` for the study ``name`` and return its path. Storage defaults to
    ``<directory>/runs``; ``blocks`` and ``top`` as in ``study_dict``."""
    path = Path(directory) / f"{name}.yaml"
    body = study_dict(name, *blocks, storage=storage or f"{directory}/runs", **top)
    path.write_text(yaml.dump(body, Dumper=_Plain, sort_keys=False, default_flow_style=None))
    return path


TINY = Path(__file__).parents[1] / "studies" / "tiny.yaml"  # every family, 14 trials: the Ray tests' study


def tiny_study(directory: Path, name: str, *, storage: str | None = None, blocks: tuple[str, ...] | None = None,
               extra: tuple[dict[str, Any], ...] = (), **top: Any) -> Path:
    """tests/studies/tiny.yaml as the study ``name`` in ``<directory>/<name>.yaml``: stored under ``storage``
    (default ``<directory>/runs``), only the blocks named in ``blocks`` (default all) and then ``extra``, with the
    top-level fields ``top`` replaced."""
    study = yaml.safe_load(TINY.read_text())
    kept = [b for b in study.pop("blocks") if blocks is None or b["name"] in blocks]
    for field in ("name", "storage"):
        study.pop(field)
    return write_study_yaml(directory, name, *kept, *extra, storage=storage, **{**study, **top})


def expected_rows(path: Path) -> set[tuple[str, int]]:
    """Every (trial_id, epoch) row the study at ``path`` ends with: one per trial and checkpoint."""
    from raystudy.study import expand, load_study  # here, not at the top: support.studies is for Ray-free tests too
    return {(t.trial_id, e) for t in expand(load_study(path)) for e in t.checkpoints}


def run_cli(*args: str, module: str = "raystudy.run", timeout: float = 120, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> tuple[int, str, str]:
    """Run ``python -m <module> *args`` to the end in a subprocess; returns (exit code, stdout, stderr).
    ``env`` replaces the environment (default: this process's)."""
    done = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)
    return done.returncode, done.stdout, done.stderr


def start_cli(path: Path, address: str, *args: str, cwd: Path | None = None) -> subprocess.Popen:
    """Start ``raystudy.run PATH --no-report`` on the Ray at ``address`` as its own process group (in ``cwd``);
    its output goes to a file (``proc.log``), not a pipe that nobody reads until the end and that a chatty
    driver could fill and block on."""
    log = path.with_name(f"{path.stem}.{time.monotonic_ns()}.log")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "raystudy.run", str(path), "--no-report", *args],
                                env={**os.environ, "RAY_ADDRESS": address, "PYTHONUNBUFFERED": "1"},
                                stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True, cwd=cwd)
    proc.log = log
    return proc


def finish(proc: subprocess.Popen, timeout: float) -> str:
    """Wait for a ``start_cli`` process and return everything it printed."""
    proc.wait(timeout=timeout)
    return proc.log.read_text()


# The study package's tests edit one valid study as a dict or write YAML text verbatim.
SMOKE = Path(__file__).resolve().parents[2] / "studies" / "smoke.yaml"


def write(tmp_path: Path, study: dict | str, name: str = "study.yaml") -> Path:
    """Write ``study`` (YAML text as is, or a dict dumped) to ``tmp_path/name``."""
    path = tmp_path / name
    path.write_text(study if isinstance(study, str) else yaml.safe_dump(study, sort_keys=False))
    return path


def base_study(tmp_path: Path) -> dict:
    """A small valid study: one circles block, one digits block (26 trials)."""
    return {
        "name": "t",
        "storage": str(tmp_path / "x"),
        "blocks": [
            {"name": "circ", "family": "circles", "task": "circles", "factor": 0.5, "model": "mlp",
             "lr": 0.01, "batch_size": 5, "epochs": 3, "seed": [0, 1]},
            {"name": "dig", "family": "images", "task": "digits", "model": "cnn_bn",
             "regime": ["base", "wd", "sam+wd"], "seed": [0, 1], "lr": [0.1, 0.01], "batch_size": [16, 32],
             "epochs": 4, "checkpoints": [1], "metrics": ["sam_sharpness", "ece"]},
        ],
    }


def ids(path: Path) -> list[str]:
    """The trial ids the study at ``path`` expands to, in grid order."""
    from raystudy.study import expand, load_study
    return [t.trial_id for t in expand(load_study(path))]
