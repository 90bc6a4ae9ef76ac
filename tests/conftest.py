import textwrap
from pathlib import Path

import pytest


@pytest.fixture
def write_study(tmp_path):
    """Write a study YAML into tmp_path and return its path; storage defaults to tmp_path/runs."""

    def _write(body: str, name: str = "study.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(body).replace("{tmp}", str(tmp_path)))
        return path

    return _write
