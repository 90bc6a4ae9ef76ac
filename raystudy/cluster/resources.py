"""Can the cluster ever provide what a study asks for? Checked once after connecting, before any trial or
measuring actor starts, because Ray itself waits silently for resources that never come.

A trial with ``workers: 0`` needs one bundle {cpus, gpus} on a single node; with ``workers: N`` it needs N
such bundles (each on some node) plus its driver's token CPU. The measuring pool's ``actors`` processes run
``cpus`` threads each on the trials' cores (they reserve no CPU, see ``cluster/measurer.py``), so their
threads must fit the cluster's CPUs; their GPU shares are reserved, and must leave room for at least one
trial beside them, or training never starts. A
cluster that autoscales (its node types are in the autoscaler's config) may add nodes: a request only a
node type could satisfy is a warning naming that type; one no node type can satisfy is an error.
"""
from __future__ import annotations

from dataclasses import dataclass

from raystudy.study import Study, StudyError

DRIVER_CPU = 0.01


@dataclass(frozen=True)
class NodeShape:
    """A node's (or node type's) total CPU and GPU count, and its name (node id or node type)."""
    name: str
    cpus: float
    gpus: float

    def fits(self, cpus: float, gpus: float) -> bool:
        return self.cpus + 1e-9 >= cpus and self.gpus + 1e-9 >= gpus


def check_resources(study: Study, path: str, nodes: list[NodeShape], node_types: list[NodeShape] | None
                    ) -> list[str]:
    """Raise ``StudyError`` ("file: field: ...") for the first request neither the live ``nodes`` nor any
    autoscaler ``node_types`` (None: the cluster does not autoscale) can ever satisfy; return warnings for
    requests only a node type the autoscaler has not started yet can satisfy. Pure: no Ray calls."""
    warnings: list[str] = []
    total_cpu = sum(n.cpus for n in nodes)
    total_gpu = sum(n.gpus for n in nodes)

    def place(field: str, cpus: float, gpus: float, count: int = 1) -> None:
        live = [n for n in nodes if n.fits(cpus, gpus)]
        enough = count * cpus <= total_cpu + 1e-9 and count * gpus <= total_gpu + 1e-9
        if live and enough:
            return
        types = [t for t in node_types or [] if t.fits(cpus, gpus)]
        need = f"{count} x {{CPU: {cpus:g}, GPU: {gpus:g}}}" if count > 1 else f"{{CPU: {cpus:g}, GPU: {gpus:g}}}"
        if types:
            warnings.append(f"{path}: {field}: {need} is not available on the cluster now; the autoscaler can "
                            f"start node type {types[0].name} ({types[0].cpus:g} CPU, {types[0].gpus:g} GPU)")
            return
        have = f"{len(nodes)} node(s), {total_cpu:g} CPU and {total_gpu:g} GPU in all, at most " \
               f"{max((n.cpus for n in nodes), default=0):g} CPU and {max((n.gpus for n in nodes), default=0):g} " \
               "GPU on one node"
        scaling = "" if node_types is None else " (and no autoscaler node type has it)"
        raise StudyError(f"{path}: {field}: needs {need}, which this cluster can never provide: {have}{scaling}")

    a = study.analysis
    place("analysis", a.cpus, a.gpus, a.actors)
    smallest_trial = None
    for i, block in enumerate(study.blocks):
        r = block.resources
        place(f"blocks[{i}].resources", r.cpus, r.gpus, max(r.workers, 1))
        need = (r.cpus * max(r.workers, 1) + (DRIVER_CPU if r.workers else 0), r.gpus * max(r.workers, 1))
        smallest_trial = need if smallest_trial is None or need < smallest_trial else smallest_trial
    if node_types is None and smallest_trial is not None:
        from raystudy.cluster.measurer import pool_reserves
        held_cpu, held_gpu = pool_reserves(a.actors, a.gpus)
        spare_cpu, spare_gpu = total_cpu - held_cpu, total_gpu - held_gpu
        if spare_cpu + 1e-9 < smallest_trial[0] or spare_gpu + 1e-9 < smallest_trial[1]:
            raise StudyError(f"{path}: analysis: {a.actors} measuring actors x {{GPU: {a.gpus:g}}} "
                             f"leave {max(spare_cpu, 0):g} CPU and {max(spare_gpu, 0):g} GPU of {total_cpu:g} / "
                             f"{total_gpu:g}: no trial (the smallest needs {smallest_trial[0]:g} CPU, "
                             f"{smallest_trial[1]:g} GPU) could ever start; use fewer or smaller actors, or "
                             "measure on the CPU (gpus: 0)")
    return warnings


def cluster_shape() -> tuple[list[NodeShape], list[NodeShape] | None]:
    """The live nodes' totals, and the autoscaler's node types with their resources (None when the cluster
    has no autoscaler config, i.e. a local instance or a fixed cluster)."""
    import ray

    nodes = [NodeShape(n["NodeID"][:8], n["Resources"].get("CPU", 0.0), n["Resources"].get("GPU", 0.0))
             for n in ray.nodes() if n.get("Alive")]
    try:  # the autoscaler publishes its node types in the GCS; no public API reads them in Ray 2.60
        from ray._private.state import state
        config = state.get_cluster_config()
    except Exception:  # noqa: BLE001 - no autoscaler, or an older/newer GCS layout: treat as fixed
        config = None
    if config is None or not config.node_group_configs:
        return nodes, None
    types = [NodeShape(g.name, float(g.resources.get("CPU", 0)), float(g.resources.get("GPU", 0)))
             for g in config.node_group_configs if g.max_count != 0]
    return nodes, types
