"""Resources a cluster can never provide are refused before anything starts (Ray itself waits forever);
an autoscaling cluster turns them into a warning naming the node type that would provide them."""
import pytest

from raystudy.cluster.resources import NodeShape, check_resources
from raystudy.study import StudyError, load_study

STUDY = """
name: r
storage: {tmp}/runs
analysis: {analysis}
blocks:
  - name: b
    family: circles
    task: circles
    factor: 0.5
    model: mlp
    lr: 0.1
    epochs: 1
    resources: {resources}
"""
LAPTOP = [NodeShape("local", 2, 0)]
GPU_TYPES = [NodeShape("head", 0, 0), NodeShape("gpu_worker", 8, 1)]


def _check(write_study, resources="{cpus: 1}", analysis="{actors: 1, cpus: 1}", nodes=LAPTOP, types=None):
    path = write_study(STUDY.replace("{resources}", resources).replace("{analysis}", analysis))
    return path, check_resources(load_study(path), str(path), nodes, types)


@pytest.mark.parametrize("resources, analysis, field, words", [
    ("{cpus: 1, gpus: 1}", "{actors: 1, cpus: 1}", "blocks[0].resources", "GPU: 1"),
    ("{cpus: 64}", "{actors: 1, cpus: 1}", "blocks[0].resources", "CPU: 64"),
    ("{cpus: 1, workers: 4}", "{actors: 1, cpus: 1}", "blocks[0].resources", "4 x {CPU: 1, GPU: 0}"),
    ("{cpus: 1}", "{actors: 10, cpus: 1}", "analysis", "10 x {CPU: 1, GPU: 0}"),
    ("{cpus: 1}", "{actors: 2, cpus: 1}", "analysis", "no trial"),
], ids=["gpu-without-gpu", "64-cpus", "4-workers-on-2-cores", "10-actors-on-2-cores", "pool-starves-trials"])
def test_impossible_requests_name_the_field(write_study, resources, analysis, field, words):
    with pytest.raises(StudyError) as err:
        _check(write_study, resources, analysis)
    msg = str(err.value)
    assert "\n" not in msg and f": {field}: " in msg and words in msg, msg


def test_what_fits_passes(write_study):
    assert _check(write_study, "{cpus: 1}", "{actors: 1, cpus: 0.5}")[1] == []
    assert _check(write_study, "{cpus: 0.5, workers: 2}", "{actors: 1, cpus: 0.5}")[1] == []


def test_an_autoscaling_cluster_warns_with_the_node_type(write_study):
    path, warnings = _check(write_study, "{cpus: 4, gpus: 0.5}", "{actors: 1, cpus: 1, gpus: 0.25}",
                            nodes=[NodeShape("head", 0, 0)], types=GPU_TYPES)
    assert len(warnings) == 2 and all("gpu_worker" in w for w in warnings)
    with pytest.raises(StudyError, match="no autoscaler node type has it"):
        _check(write_study, "{cpus: 16, gpus: 1}", nodes=[NodeShape("head", 0, 0)], types=GPU_TYPES)
