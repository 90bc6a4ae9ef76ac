"""Small study files for the study package's tests: a valid two-block study to edit, written as YAML."""
from __future__ import annotations

from pathlib import Path

import yaml

from raystudy.study import expand, load_study

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "studies" / "smoke.yaml"


def write(tmp_path: Path, study: dict | str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(study if isinstance(study, str) else yaml.safe_dump(study, sort_keys=False))
    return path


def base_study(tmp_path: Path) -> dict:
    """A small valid study: one circles block, one digits block."""
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
    return [t.trial_id for t in expand(load_study(path))]
