"""Resources a cluster can never provide are refused before anything starts (Ray itself waits forever);
an autoscaling cluster turns them into a warning naming the node type that would provide them."""
import pytest

from raystudy.cluster.resources import NodeShape, check_resources
from raystudy.study import StudyError, expand, load_study
from support.studies import tiny_block, write_study_yaml

LAPTOP = [NodeShape("local", 2, 0)]
GPU_TYPES = [NodeShape("head", 0, 0), NodeShape("gpu_worker", 8, 1)]


def _check(tmp_path, resources: dict, analysis: dict | None = None, nodes=LAPTOP, types=None):
    block = tiny_block(name="b", lr=0.1, epochs=1, resources=resources)
    path = write_study_yaml(tmp_path, "r", block, analysis=analysis or {"actors": 1, "cpus": 1})
    return path, check_resources(load_study(path), str(path), nodes, types)


@pytest.mark.parametrize("resources, analysis, field, words", [
    ({"cpus": 1, "gpus": 1}, {"actors": 1, "cpus": 1}, "blocks[0].resources", "GPU: 1"),
    ({"cpus": 64}, {"actors": 1, "cpus": 1}, "blocks[0].resources", "CPU: 64"),
    ({"cpus": 1, "workers": 4}, {"actors": 1, "cpus": 1}, "blocks[0].resources", "4 x {CPU: 1, GPU: 0}"),
    ({"cpus": 1}, {"actors": 10, "cpus": 1}, "analysis", "10 x {CPU: 1, GPU: 0}"),
], ids=["gpu-without-gpu", "64-cpus", "4-workers-on-2-cores", "10-actors-on-2-cores"])
def test_impossible_requests_name_the_field(tmp_path, resources, analysis, field, words):
    with pytest.raises(StudyError) as err:
        _check(tmp_path, resources, analysis)
    msg = str(err.value)
    assert "\n" not in msg and f": {field}: " in msg and words in msg, msg


def test_what_fits_passes(tmp_path):
    assert _check(tmp_path, {"cpus": 1}, {"actors": 1, "cpus": 0.5})[1] == []
    assert _check(tmp_path, {"cpus": 0.5, "workers": 2}, {"actors": 1, "cpus": 0.5})[1] == []


def test_tune_stops_the_experiment_once_the_pool_halts(tmp_path):
    """StopOnHalt ends the experiment (every trial still to start) once the pool halted on unreachable storage,
    never before; and Tune can save it to its state file although the pool's callbacks hold the console (an
    open file: this is what broke every storage-fault run when the stopper held the pool as is)."""
    from ray import cloudpickle
    from raystudy.cluster.pool import MeasurePool
    from raystudy.cluster.trials import StopOnHalt
    with open(tmp_path / "console", "w") as console:
        pool = MeasurePool(measurers=None, on_result=console.write)
        stop = StopOnHalt(pool)
        assert not stop.stop_all() and not stop("t", {"epoch": 1})
        restored = cloudpickle.loads(cloudpickle.dumps(stop))
        pool.halted = "storage: s3://b/s: cannot reach bucket 'b'"
        assert stop.stop_all() and not stop("t", {"epoch": 1})
        assert not restored.stop_all()  # a copy in another process has no pool: it stops nothing


def test_measuring_on_the_cpu_holds_no_trial_slot(tmp_path):
    """The pool reserves no CPU (cluster/measurer.py): on 2 cores, 2 one-CPU trials run beside 2 measurers."""
    from raystudy.cluster.measurer import actor_options, pool_reserves
    from raystudy.cluster.trials import max_concurrent
    path, warnings = _check(tmp_path, {"cpus": 1}, {"actors": 2, "cpus": 1})
    assert warnings == [] and actor_options(0.0) == {"num_cpus": 0, "num_gpus": 0.0}
    trials = expand(load_study(path)) * 4
    assert pool_reserves(2, 0.0) == (0.0, 0.0)
    assert max_concurrent(trials, *pool_reserves(2, 0.0), total={"CPU": 2.0}) == 2
    # Fractional GPUs: four quarter-GPU trials on one card; a measurer on the GPU takes (and caps itself to)
    # a quarter share, leaving three; on the CPU it leaves all four.
    quarters = expand(load_study(_check(tmp_path, {"cpus": 0.25, "gpus": 0.25},
                                        nodes=[NodeShape("gpu", 8, 1)])[0])) * 8
    gpu_node = {"CPU": 8.0, "GPU": 1.0}
    assert actor_options(0.25) == {"num_cpus": 0, "num_gpus": 0.25}
    assert max_concurrent(quarters, *pool_reserves(1, 0.25), total=gpu_node) == 3
    assert max_concurrent(quarters, *pool_reserves(1, 0.0), total=gpu_node) == 4


def test_a_cpu_measurer_takes_only_the_cycles_training_leaves(tmp_path):
    """A measurer built with ``nice`` lowers its own thread's priority (a CPU measurer gets NICE: the
    lowest), and leaves every other thread as it was."""
    import os
    import threading
    from raystudy.cluster.measurer import NICE, Measurer
    assert NICE == 19
    before, seen = os.getpriority(os.PRIO_PROCESS, 0), []

    def build():
        Measurer(str(tmp_path), threads=None, gpus=0.0, nice=NICE)
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    thread = threading.Thread(target=build)
    thread.start()
    thread.join()
    assert seen == [min(before + NICE, 19)] and os.getpriority(os.PRIO_PROCESS, 0) == before


def test_a_pool_on_the_gpu_must_leave_a_trial_room(tmp_path):
    with pytest.raises(StudyError) as err:
        _check(tmp_path, {"cpus": 1, "gpus": 1}, {"actors": 1, "cpus": 1, "gpus": 0.5}, nodes=[NodeShape("gpu", 8, 1)])
    assert ": analysis: " in str(err.value) and "no trial" in str(err.value) and "gpus: 0" in str(err.value)


def test_an_autoscaling_cluster_warns_with_the_node_type(tmp_path):
    path, warnings = _check(tmp_path, {"cpus": 4, "gpus": 0.5}, {"actors": 1, "cpus": 1, "gpus": 0.25},
                            nodes=[NodeShape("head", 0, 0)], types=GPU_TYPES)
    assert len(warnings) == 2 and all("gpu_worker" in w for w in warnings)
    with pytest.raises(StudyError, match="no autoscaler node type has it"):
        _check(tmp_path, {"cpus": 16, "gpus": 1}, nodes=[NodeShape("head", 0, 0)], types=GPU_TYPES)
