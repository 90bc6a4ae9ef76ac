"""The import graph the architecture promises (docs/ARCHITECTURE.md): stages in one direction, Trial outside
the study-file parser, the study folder's layout in one module, numerics without Ray."""
from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "raystudy"
# Stage of each top-level module or package; anything not listed is neutral ground (trial, build, layout,
# models, tasks, metrics registry, schema, storage, lock, seeding) or the driver (run, cli, cluster).
STAGE = {"study": 0, "plan": 1, "train": 2, "measure": 3, "geometry": 3, "safety": 3, "analysis": 4, "report": 5}


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return out


def _modules() -> dict[str, list[str]]:
    return {str(p.relative_to(PACKAGE)): _imports(p) for p in PACKAGE.rglob("*.py")}


def test_no_stage_imports_a_later_stage():
    backwards = []
    for path, imports in _modules().items():
        mine = STAGE.get(path.split("/")[0].removesuffix(".py"))
        for module in imports:
            parts = module.split(".")
            if parts[0] == "raystudy" and len(parts) > 1 and mine is not None:
                theirs = STAGE.get(parts[1])
                if theirs is not None and theirs > mine:
                    backwards.append(f"{path} imports {module}")
    assert not backwards, backwards


def test_trial_lives_outside_the_parser():
    for path, imports in _modules().items():
        # (cluster/resources.py and cluster/connect.py check a Study against the cluster: parser side)
        if path.split("/")[0] in ("train", "measure", "trial.py", "build.py", "checkpoints.py") \
                or path in ("cluster/trials.py", "cluster/pool.py"):
            parser = [m for m in imports if m == "raystudy.study" or m.startswith("raystudy.study.")]
            assert not parser, f"{path} imports the study-file parser: {parser}"


def test_the_study_package_is_the_first_stage():
    """study/ (schema, load, grid, preflight, cost, bounds) imports no later stage and not the Ray glue; the
    plan may import it; the old flat modules are gone (one definition of each thing)."""
    later = ("plan", "train", "measure", "analysis", "report", "cluster", "run")
    offenders = [f"{path} imports {m}" for path, imports in _modules().items() if path.startswith("study/")
                 for m in imports if m.split(".")[:2] in (["raystudy", x] for x in later)]
    assert not offenders, offenders
    assert "raystudy.study" in _imports(PACKAGE / "plan.py")
    gone = [n for n in ("spec", "bounds", "cost", "preflight", "study_schema") if (PACKAGE / f"{n}.py").exists()]
    assert not gone, gone


def test_the_study_folder_layout_is_written_down_once():
    literal = re.compile(r"""path\(\s*["'](results|report|checkpoints|ray|study\.yaml|lock\.json)["']""")
    offenders = [p for p in _modules() if p != "layout.py" and literal.search((PACKAGE / p).read_text())]
    assert not offenders, offenders


def test_numerical_code_never_imports_ray():
    for path, imports in _modules().items():
        if path.split("/")[0] in ("train", "geometry", "safety", "metrics", "models", "tasks"):
            assert not any(m == "ray" or m.startswith("ray.") for m in imports), path
