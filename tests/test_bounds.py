"""Bounded everything (issue 13): every number in a study file has a documented range, the grid is counted
before it is built, the study file is read with limits on type, size and depth, the model must fit the
node's memory, and settings that would be ignored or misplace the study are refused. Each failure is one
line naming the file and the field, exit 2, no traceback, nothing written, before Ray starts."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import yaml

from raystudy.study import bounds
from raystudy.study.preflight import memory_bytes, preflight
from raystudy.run import main
from raystudy.study import StudyError, expand, grid_size, load_study

ROOT = Path(__file__).resolve().parents[1]


def study(tmp_path: Path, block: dict | None = None, **top) -> dict:
    """A valid one-block functions study with ``block`` merged into the block and ``top`` into the top level."""
    b = {"name": "f", "family": "functions", "task": "sphere", "model": "mlp", "lr": 0.1, "epochs": 2,
         **(block or {})}
    return {"name": "s", "storage": str(tmp_path / "runs"), **top, "blocks": [b]}


def write(tmp_path: Path, data: dict | str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def refused(path: Path, field: str) -> str:
    """The one-line StudyError of loading ``path``, checked to name the file and ``field``."""
    with pytest.raises(StudyError) as err:
        load_study(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: {field}: "), msg
    return msg


def _nested(path: str, value) -> dict:
    out: dict = {}
    here = out
    *parents, leaf = path.split(".")
    for p in parents:
        here = here.setdefault(p, {})
    here[leaf] = value
    return out


def _above(rng: bounds.Range) -> int:
    return int(rng.hi) + 1


LIST_FIELDS = {"checkpoints", "model_args.hidden", "sharpness.rhos", "adaptive.rho"}
# A block in which each field is used, so that only its range can refuse it.
CONTEXT = {"model_args.width": {"family": "images", "task": "digits", "model": "cnn_bn"},
           "adaptive.m": {"adaptive": {"kind": ["worst"]}}}


@pytest.mark.parametrize("path", sorted(bounds.BLOCK))
def test_every_block_number_above_its_range_is_one_line_naming_the_field(tmp_path, path):
    value = _above(bounds.BLOCK[path])
    block = {**CONTEXT.get(path, {})}
    for key, v in _nested(path, [value] if path in LIST_FIELDS else value).items():
        block[key] = {**block.get(key, {}), **v} if isinstance(v, dict) else v
    msg = refused(write(tmp_path, study(tmp_path, block)), f"blocks[0].{path}")
    if path != "checkpoints":  # checked against epochs first, which says so
        assert f"{value:g} is outside {bounds.BLOCK[path].text()}" in msg, msg


@pytest.mark.parametrize("path", sorted(bounds.STUDY))
def test_every_study_number_above_its_range_is_refused(tmp_path, path):
    value = _above(bounds.STUDY[path])
    refused(write(tmp_path, study(tmp_path, **_nested(path, value))), path)


@pytest.mark.parametrize("block, field", [
    ({"epochs": 1e12}, "blocks[0].epochs"),
    ({"sharpness": {"draws": 10**12}}, "blocks[0].sharpness.draws"),
    ({"complexity": {"points": 10**9}}, "blocks[0].complexity.points"),
    ({"n_train": 10**11}, "blocks[0].n_train"),
    ({"regime": "sam", "sam_rho": 1e30}, "blocks[0].sam_rho"),
    ({"regime": "sam", "sam_rho": [0.05, 1e30]}, "blocks[0].sam_rho[1]"),
], ids=["epochs-1e12", "draws-1e12", "points-1e9", "n_train-1e11", "sam_rho-1e30", "sam_rho-list"])
def test_the_reported_values_are_refused(tmp_path, block, field):
    refused(write(tmp_path, study(tmp_path, block)), field)


def test_every_shipped_study_is_inside_the_ranges():
    for path in sorted((ROOT / "studies").glob("*.yaml")):
        assert expand(load_study(path)), path


# ---------------------------------------------------------------- the grid, counted before it is built


def test_a_ten_million_trial_grid_is_refused_in_seconds_and_constant_memory(tmp_path):
    def ten():  # a new list each time: yaml.safe_dump writes a repeated object as an alias, refused
        return [round(0.01 * (i + 1), 2) for i in range(10)]
    block = {"family": "circles", "task": "circles", "factor": [round(0.05 * (i + 1), 2) for i in range(10)],
             "label_noise": ten(), "lr": ten(), "momentum": ten(), "batch_size": list(range(1, 11)),
             "seed": list(range(10)), "regime": "sam", "sam_rho": ten()}
    path = write(tmp_path, study(tmp_path, block))
    tracemalloc.start()
    t0 = time.perf_counter()
    msg = refused(path, "max_trials")
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "10,000,000 trials" in msg and "100,000" in msg
    assert elapsed < 5 and peak < 20 * 2**20, (elapsed, peak)


def test_grid_size_counts_what_expand_builds_and_max_trials_is_the_limit(tmp_path):
    block = {"regime": ["base", "sam", "wd", "wd+sam"], "sam_rho": [0.01, 0.1, 0.5], "weight_decay": [0, 1e-3],
             "seed": [0, 1], "task": ["sphere", "booth"]}
    s = load_study(write(tmp_path, study(tmp_path, block)))
    n = len(expand(s))
    assert grid_size(s.blocks[0]) == n == 2 * 2 * (1 + 3 + 2 + 6)
    load_study(write(tmp_path, study(tmp_path, block, max_trials=n)))
    refused(write(tmp_path, study(tmp_path, block, max_trials=n - 1)), "max_trials")


@pytest.mark.slow  # ~10 s of YAML parsing on a busy machine
def test_a_long_axis_is_checked_for_repeats_in_linear_time(tmp_path):
    seeds = list(range(20_000))  # the quadratic repeat check compared 2 x 10^8 pairs here
    path = write(tmp_path, study(tmp_path, {"seed": seeds}))
    t0 = time.process_time()  # CPU time: the machine is shared
    assert grid_size(load_study(path).blocks[0]) == 20_000
    assert time.process_time() - t0 < 5  # ~1 s, parsing the YAML
    refused(write(tmp_path, study(tmp_path, {"seed": [*seeds, 5]})), "blocks[0].seed")


# ---------------------------------------------------------------- reading the study file


def test_a_study_file_nested_100k_deep_is_one_line(tmp_path):
    path = write(tmp_path, "name: s\nblocks: " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(StudyError) as err:
        load_study(path)
    assert str(err.value).startswith(f"{path}: line 2: invalid YAML: nested deeper than {bounds.MAX_DEPTH}")


def test_a_study_file_over_1_mib_or_not_a_regular_file_is_refused(tmp_path):
    big = write(tmp_path, "name: s\n" + "#" * bounds.MAX_FILE_BYTES + "\n", "big.yaml")
    for path, words in ((big, "larger than 1,048,576 bytes"), (tmp_path, "is a directory"),
                        (Path("/dev/zero"), "is a device"), (tmp_path / "none.yaml", "file not found")):
        with pytest.raises(StudyError) as err:
            load_study(path)
        assert str(err.value) == f"{path}: {words}" or str(err.value).startswith(f"{path}: {words}"), err.value


def test_fifo_dev_zero_and_infeasible_resources_through_the_cli_exit_2_without_hanging(tmp_path):
    """One interpreter for the three (imports dominate): a FIFO with no writer blocked open() for ever,
    /dev/zero grew memory without limit, and 8 GPUs on this machine started Ray (30-50 s) and wrote
    study.yaml before being refused."""
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    gpus = write(tmp_path, study(tmp_path, {"resources": {"gpus": 8}}), "gpus.yaml")
    cases = [str(fifo), "/dev/zero", str(gpus)]
    script = ("import sys\nfrom raystudy.run import main\n"
              "for p in sys.argv[1:]:\n    print(main([p]), flush=True)\n    print('--', file=sys.stderr, flush=True)\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", script, *cases], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.split() == ["2", "2", "2"], (out.stdout, out.stderr[-2000:])
    errs = [e.strip() for e in out.stderr.split("--")[:3]]
    assert errs[0] == f"{fifo}: is a FIFO, not a regular file"
    assert errs[1] == "/dev/zero: is a device, not a regular file"
    assert len(errs[2].splitlines()) == 1 and errs[2].startswith(f"{gpus}: blocks[0].resources: needs "), errs[2]
    assert "Traceback" not in out.stderr and not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- model size, data root, storage


def test_a_model_larger_than_memory_is_refused_without_building_it_and_dry_run_says_so(tmp_path, capsys):
    width = int((2 * memory_bytes() / bounds.BYTES_PER_PARAM) ** 0.5)  # two layers of width^2 weights
    path = write(tmp_path, study(tmp_path, {"model_args": {"hidden": [width, width]}}))
    with pytest.raises(StudyError) as err:
        preflight(load_study(path), path)
    assert str(err.value).startswith(f"{path}: blocks[0].model_args: mlp has ") and "GiB of memory" in str(err.value)
    assert main([str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "more than this node's" in err
    assert not (tmp_path / "runs").exists()


def test_data_root_on_a_task_without_files_is_refused(tmp_path):
    block = {"family": "images", "task": "digits", "model": "cnn_bn", "data_root": str(tmp_path)}
    msg = refused(write(tmp_path, study(tmp_path, block)), "blocks[0].data_root")
    assert "'digits' reads no files" in msg
    block = {"family": "images", "task": ["cifar10", "digits"], "model": "cnn_bn", "data_root": str(tmp_path)}
    refused(write(tmp_path, study(tmp_path, block)), "blocks[0].data_root")


@pytest.mark.parametrize("storage", ["", "   "])
def test_empty_storage_is_refused(tmp_path, storage):
    refused(write(tmp_path, {**study(tmp_path), "storage": storage}), "storage")


def test_an_empty_storage_option_is_refused(tmp_path, capsys):
    assert main([str(write(tmp_path, study(tmp_path))), "--storage", ""]) == 2
    assert capsys.readouterr().err.strip() == "--storage: empty: name a folder or a bucket (s3://bucket/prefix)"
    assert not (tmp_path / "runs").exists()


def test_storage_through_a_dangling_symlink_is_refused_and_creates_nothing(tmp_path, capsys):
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere" / "deep")
    path = write(tmp_path, {**study(tmp_path), "storage": str(tmp_path / "link" / "runs")})
    assert main([str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"{path}: storage: {tmp_path / 'link' / 'runs'}: {tmp_path / 'link'} is a broken symbolic link " \
                  "(its target does not exist)", err
    assert not (tmp_path / "elsewhere").exists()
