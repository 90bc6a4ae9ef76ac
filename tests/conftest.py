import textwrap
from pathlib import Path

import pytest
import torch


@pytest.fixture
def write_study(tmp_path):
    """Write a study YAML into tmp_path and return its path; storage defaults to tmp_path/runs."""

    def _write(body: str, name: str = "study.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(body).replace("{tmp}", str(tmp_path)))
        return path

    return _write


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: two OpenMP threads stall each other (up to x10 slower).
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
