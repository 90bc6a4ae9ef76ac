import os
import textwrap
from pathlib import Path

# Under `uv run pytest` Ray would rebuild this uv environment for the workers of every Ray instance a test
# starts (~10-20 s each); the workers of a local instance run this same environment already. (The CLI sets
# the same default for itself: raystudy.run.quiet_ray.) Set before any test module imports Ray.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

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
