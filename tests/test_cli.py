"""The `raystudy` command, its study-file schema, and the public Python API a notebook uses."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema
import pytest
import yaml

import raystudy
from raystudy.cli import main
from raystudy.study.json_schema import json_schema

ROOT = Path(__file__).resolve().parents[1]
STUDIES = sorted((ROOT / "studies").glob("*.yaml"))
SCHEMA_LINE = "# yaml-language-server: $schema=study.schema.json"


def _python(code: str, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def test_help_imports_nothing_heavy_and_lists_exit_codes():
    # `raystudy --help` answers at once because it imports neither torch nor Ray nor polars.
    out = _python("""
        import sys
        from raystudy.cli import main
        assert main(["--help"]) == 0
        assert main(["run", "--help"]) == 0  # the run command's options and exit codes, without importing it
        heavy = sorted(m for m in ("torch", "ray", "polars", "altair", "pydantic") if m in sys.modules)
        print("HEAVY", heavy)
    """)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout
    for word in ("run", "report", "data", "schema", "exit codes", "130", "--dry-run", "--quiet", "--png"):
        assert word in out.stdout


def test_console_script_version_and_unknown_command(capsys):
    script = Path(sys.executable).with_name("raystudy")  # installed by `uv sync` ([project.scripts])
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"raystudy {raystudy.__version__}"
    assert main(["train"]) == 2
    assert "unknown command 'train'" in capsys.readouterr().err


def test_fast_exit_keeps_the_code_the_output_and_the_exit_handlers(tmp_path):
    # The command line leaves without the interpreter's teardown, but after everything a normal exit does that
    # anyone can see: exit handlers run (Ray's shutdown is one), buffered output reaches the pipe, the code is
    # kept. With another non-daemon thread still working it exits normally, after that thread.
    out = _python(f"""
        import atexit, sys, threading, time
        from pathlib import Path
        from raystudy.cli import exit_fast
        atexit.register(lambda: Path({str(tmp_path / "handler")!r}).write_text("ran"))
        if sys.argv[-1] == "thread":
            threading.Thread(target=lambda: (time.sleep(0.5), Path({str(tmp_path / "thread")!r}).write_text("done"))).start()
        sys.stdout.write("buffered, no newline")
        exit_fast(3)
        print("never")
    """)
    assert out.returncode == 3 and out.stdout == "buffered, no newline", (out.stdout, out.stderr)
    assert (tmp_path / "handler").read_text() == "ran"
    waited = subprocess.run([sys.executable, "-c", out.args[2], "thread"], capture_output=True, text=True, timeout=60)
    assert waited.returncode == 3 and (tmp_path / "thread").read_text() == "done", waited.stderr


def test_subcommands_reach_their_modules(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["report", "--help"])
    assert exc.value.code == 0 and {"--verdicts-only", "--png", "--no-png"} <= set(capsys.readouterr().out.split())
    assert main(["report", "/nonexistent/study"]) == 2


def test_shipped_studies_validate_against_the_exported_schema():
    schema = json_schema()
    shipped = json.loads((ROOT / "studies" / "study.schema.json").read_text())
    assert shipped == schema, "studies/study.schema.json is stale: raystudy schema > studies/study.schema.json"
    validator = jsonschema.Draft202012Validator(schema)
    for path in STUDIES:
        assert path.read_text().splitlines()[0] == SCHEMA_LINE, f"{path.name}: first line should name the schema"
        errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
        assert not errors, f"{path.name}: {errors[:3]}"


def test_schema_knows_the_names_and_refuses_unknown_ones(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    block = schema["$defs"]["Block"]["properties"]
    names = lambda prop: next(a["enum"] for a in prop["anyOf"] if a.get("type") == "string")
    assert {"mlp", "resnet18_cifar"} <= set(names(block["model"])) and "digits" in names(block["task"])
    assert "wd+sam" in names(block["regime"]) and "hessian" in block["metrics"]["items"]["enum"]
    smoke = yaml.safe_load((ROOT / "studies" / "smoke.yaml").read_text())
    smoke["blocks"][0]["model"] = "resnet81"
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(smoke))


@pytest.mark.slow
def test_notebook_uses_only_the_public_api(tmp_path):
    # What a notebook does: run a tiny study, read its rows, rebuild the report: nothing but `raystudy.*`.
    out = _python(f"""
        import raystudy
        study = {{"name": "nb", "storage": {str(tmp_path / "runs")!r}, "blocks": [
            {{"name": "fn", "family": "functions", "task": "sphere", "model": "mlp", "model_args": {{"hidden": [8]}},
              "seed": [0, 1], "lr": 0.01, "optimizer": "adam", "epochs": 4, "checkpoints": [0, 4],
              "n_train": 64, "n_test": 64, "sharpness": {{"rhos": [0.005], "draws": 4}}}}]}}
        run = raystudy.run_study(study, num_cpus=2, report=False)
        assert run.ok, run
        rows = raystudy.load_results(run.study_dir)
        assert rows.height == 4 and rows["sam_sharpness"].null_count() == 0, rows
        page = raystudy.build_report(run.study_dir, out={str(tmp_path / "copy")!r}, pngs=True)
        assert page.name == "index.html" and page.exists() and list(page.parent.glob("*.png"))  # copied too
        assert raystudy.load_study({str(ROOT / "studies" / "smoke.yaml")!r}).name == "smoke"
        print("NOTEBOOK OK")
    """, timeout=600, cwd=tmp_path)
    assert "NOTEBOOK OK" in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]
