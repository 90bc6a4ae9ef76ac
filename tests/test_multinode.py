"""A study on a local multi-node Ray cluster (``ray.cluster_utils.Cluster``: a head and two worker nodes) with its
storage in a bucket (moto's S3 server), the only storage the nodes share. A worker node is removed mid-study:
its trials are retried on the node left and resume from the bucket, its measuring actor is replaced, and the
run ends as the CLI's exit 0 (nothing failed) with every (trial, checkpoint) row exactly once (issue 13, 6)."""
from __future__ import annotations

import threading
import time

import polars as pl
import pytest
import ray
from ray.cluster_utils import Cluster

from raystudy.run import execute, plan
from raystudy.storage import Store
from support.s3_server import s3_bucket
from support.studies import expected_rows, tiny_block, write_study_yaml

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster():
    """The bucket, then a head without CPUs (it only hosts the driver's side) and two worker nodes of two
    logical CPUs each, so that trials and the measuring actor run on the workers; yields (bucket, cluster)."""
    with s3_bucket() as bucket:  # AWS_* set first: every node's processes inherit the endpoint
        nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        workers = [nodes.add_node(num_cpus=2) for _ in range(2)]
        nodes.wait_for_nodes()
        ray.init(address=nodes.address, log_to_driver=False)
        try:
            yield bucket, nodes, workers
        finally:
            ray.shutdown()
            nodes.shutdown()


def test_lost_worker_node_with_storage_in_a_bucket(tmp_path, cluster):
    bucket, nodes, workers = cluster
    block = tiny_block(seed=[0, 1, 2, 3], shuffle_seed=0, epochs=300, checkpoints=[100, 200, 300],
                       resume_every={"epochs": 25, "minutes": None}, metrics=["fisher_rao"])
    path = write_study_yaml(tmp_path, "lostnode", block, storage=f"{bucket}/runs", analysis={"actors": 1, "cpus": 0.5})
    store = Store(f"{bucket}/runs/lostnode")
    removed: list[float] = []

    def remove_a_worker_mid_study() -> None:
        deadline = time.time() + 300
        while time.time() < deadline:
            if store.list(store.path("results"), ".parquet", recursive=True):  # mid-study: a row is in
                nodes.remove_node(workers[0])
                removed.append(time.time())
                return
            time.sleep(0.2)

    killer = threading.Thread(target=remove_a_worker_mid_study, daemon=True)
    killer.start()
    p = plan(str(path))
    out = execute(p, verbose=0)
    killer.join(timeout=5)
    assert removed, "no row appeared: the node was never removed"
    assert not out.failed and not out.measure_errors and not out.interrupted  # what the CLI exits 0 on
    rows = [pl.read_parquet(store.read_bytes(f)) for f in store.list(store.path("results"), ".parquet", recursive=True)]
    df = pl.concat(rows)
    want = expected_rows(path)
    assert df.height == len(want) and set(zip(df["trial_id"], df["epoch"])) == want  # every row, once
    assert (df["status"] == "ok").all() and df["fisher_rao"].null_count() == 0
    assert sorted(f.name for f in tmp_path.iterdir()) == ["lostnode.yaml"]  # nothing on the local disk
