"""Data-parallel training computes what one process computes (up to float reduction order): first with
plain torch.distributed (two spawned gloo processes, no Ray), then through Ray Train's TorchTrainer with
two CPU workers, where rank 0 alone writes checkpoints and each of them loads into the plain model.

Tolerance: weights agree to 1e-5 absolute (weights are O(1)). Sharding changes only the order of float32
sums (a per-shard mean, then DDP's average; the BatchNorm statistics summed per shard): about one ulp
(6e-8) per step; measured 6e-8 (MLP) to 1.2e-7 (BatchNorm CNN, SAM) over the 11-14 steps trained here.
The control, the same workers with plain (unsynchronised) BatchNorm, differs by ~2e-2, so the check can
fail. The runs are kept this short on purpose: training is not a smooth map. A 1-ulp difference that
lands on a ReLU or max-pool tie picks another subgradient, after which the runs drift apart exactly as
the single-process run drifts from itself when its initial weights are perturbed by 1e-7 (measured with
SAM on digits: 3e-5 after 20 steps, 3e-3 after 40, both for that perturbation and for two workers).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from raystudy.checkpoints import list_checkpoints, load_checkpoint
from raystudy.study import expand, load_study
from raystudy.storage import Store
from raystudy.train.batchnorm import HostSyncBatchNorm, sync_batchnorm
from raystudy.train.ddp import DataParallel, Shard
from raystudy.train.loop import build_model, load_trial_task, train_trial
from support.studies import digits_block, tiny_block, write_study_yaml

TOL = 1e-5


def _trials(tmp_path: Path):
    two = {"cpus": 1, "workers": 2}
    blocks = (
        # 50 points in batches of 7: the last batch has one row, one worker none
        tiny_block(model_args={"hidden": [16]}, regime=["base", "sam"], batch_size=7, checkpoints=[0, 1],
                   resources=two),
        # 1347 digits in batches of 128: the last batch (67 rows) splits 33/34
        digits_block(name="d", regime=["base", "sam"], epochs=1, resources=two),
        # augmentation drawn for the whole batch, then sharded
        digits_block(name="a", model="mlp", model_args={"hidden": [16]}, regime="aug+sam", epochs=1, resources=two),
    )
    path = write_study_yaml(tmp_path, "ddp", *blocks)
    return {t.trial_id.rsplit("-", 1)[0]: t for t in expand(load_study(path))}


def _final(store: Store, trial_id: str) -> dict:
    return load_checkpoint(store, list_checkpoints(store, trial_id)[-1].path)


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


# ------------------------------------------------------------------------------ shards, no processes


@pytest.mark.parametrize("n", [1, 2, 7, 67, 128])
@pytest.mark.parametrize("world", [2, 3, 8])
def test_shards_partition_every_batch_and_weights_make_the_mean(n, world):
    x, y = torch.arange(n * 2.0).view(n, 2), torch.arange(n)
    parts = [Shard(r, world).take(x, y) for r in range(world)]
    assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
    assert max(len(p[1]) for p in parts) - min(len(p[1]) for p in parts) <= 1
    # DDP averages over workers: mean_r(weight_r * mean over shard r) must be the batch mean.
    per_row = torch.rand(n, dtype=torch.float64)
    mean = sum(Shard(r, world).weight(n) * (per_row[slice(*Shard(r, world).bounds(n))].mean() if p[1].numel() else 0.0)
               for r, p in enumerate(parts)) / world
    assert float(mean) == pytest.approx(float(per_row.mean()), rel=1e-12)
    with pytest.raises(ValueError, match="rank must be in"):
        Shard(world, world)


def test_sync_batchnorm_keeps_parameters_and_state_dict_keys(tmp_path):
    trial = next(t for t in _trials(tmp_path).values() if t.model == "cnn_bn")
    task = load_trial_task(trial)
    model = build_model(trial, task)
    params, keys = [id(p) for p in model.parameters()], list(model.state_dict())
    converted = sync_batchnorm(model, torch.device("cpu"))
    assert converted is model and [id(p) for p in model.parameters()] == params
    assert list(model.state_dict()) == keys and any(isinstance(m, HostSyncBatchNorm) for m in model.modules())
    plain = build_model(trial, task)
    plain.load_state_dict(model.state_dict())  # strict: a checkpoint loads into the plain model
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(plain.eval()(x), model.eval()(x))  # one process / eval mode: plain BatchNorm


# ------------------------------------------------------------------------ two gloo processes, no Ray


class PlainBatchNorm(DataParallel):
    """The control: data-parallel workers whose BatchNorm normalises with its own shard's statistics."""

    def prepare(self, model, device):
        return model


def _bn_case(seed: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64) * 3 + 1
    return x, torch.randn(*shape, generator=g, dtype=torch.float64)


def _bn_full(x: torch.Tensor, r: torch.Tensor) -> dict:
    bn = (nn.BatchNorm2d if x.dim() == 4 else nn.BatchNorm1d)(x.size(1)).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(1))
    x = x.clone().requires_grad_()
    out = bn(x)
    (out * r).sum().backward()
    return {"out": out.detach(), "dx": x.grad, "dw": bn.weight.grad, "db": bn.bias.grad,
            "mean": bn.running_mean, "var": bn.running_var}


def _bn_shard(x: torch.Tensor, r: torch.Tensor, shard: Shard) -> dict:
    bn = HostSyncBatchNorm(x.size(1)).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(1))
    (x, r), n = shard.take(x, r), len(x)
    x = x.clone().requires_grad_()
    out = bn(x)
    (out * r).sum().backward()
    grads = torch.cat([bn.weight.grad, bn.bias.grad])
    dist.all_reduce(grads)  # the parameter gradient of the whole batch's sum is the sum of the parts
    c = x.size(1)
    return {"out": out.detach(), "dx": x.grad, "dw": grads[:c], "db": grads[c:], "mean": bn.running_mean,
            "var": bn.running_var}


BN_CASES = [(0, (7, 3, 2, 2)), (1, (1, 3, 4, 4)), (2, (9, 5))]  # uneven shards; one worker empty; BatchNorm1d


def _workers(rank: int, world: int, root: str, trials: list) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{root}/pg", rank=rank, world_size=world)
    try:
        torch.save([_bn_shard(*_bn_case(*case), Shard(rank, world)) for case in BN_CASES], f"{root}/bn{rank}.pt")
        for t in trials:
            train_trial(t, Store(f"{root}/ddp"), parallel=DataParallel(rank, world))
        train_trial(trials[-1], Store(f"{root}/plain"), parallel=PlainBatchNorm(rank, world))
        # Both ranks tear down together: a rank that destroys the group (and exits) while its peer still
        # talks to the file store made gloo's peer abort (std::terminate, ~1 run in 8 on a loaded machine).
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_gloo_workers_train_what_one_process_trains(tmp_path):
    by = _trials(tmp_path)
    trials = [by["c-circles-mlp-sam-s0"], by["a-digits-mlp-aug+sam-s0"], by["d-digits-cnn_bn-sam-s0"]]
    mp.spawn(_workers, args=(2, str(tmp_path), trials), nprocs=2)

    for i, case in enumerate(BN_CASES):  # synchronised BatchNorm == BatchNorm on the whole batch (float64)
        want, parts = _bn_full(*_bn_case(*case)), [torch.load(tmp_path / f"bn{r}.pt")[i] for r in range(2)]
        for k in ("out", "dx"):
            torch.testing.assert_close(torch.cat([p[k] for p in parts]), want[k], rtol=1e-12, atol=1e-12)
        for k in ("dw", "db", "mean", "var"):
            for p in parts:
                torch.testing.assert_close(p[k], want[k], rtol=1e-12, atol=1e-12)

    torch.set_num_threads(1)
    single, ddp, plain = (Store(str(tmp_path / name)) for name in ("single", "ddp", "plain"))
    for t in trials:
        train_trial(t, single)
        a, b = _final(single, t.trial_id), _final(ddp, t.trial_id)
        assert _max_diff(a["model"], b["model"]) < TOL, t.trial_id
        assert b["train_loss_running"] == pytest.approx(a["train_loss_running"], rel=TOL)
        assert (a["world_size"], b["world_size"]) == (1, 2)
    control = _max_diff(_final(single, trials[-1].trial_id)["model"], _final(plain, trials[-1].trial_id)["model"])
    assert control > 100 * TOL  # per-shard BatchNorm statistics are not the single-process run


# ------------------------------------------------------------------------- Ray Train, two CPU workers


def _ray_loop(config: dict) -> None:
    """Every trial through raystudy's own Train worker function, recording which rank wrote which file."""
    import ray.train
    from raystudy.cluster.trials import _train_worker

    rank, write = ray.train.get_context().get_world_rank(), Store.write_bytes

    def recorded(self, path, data):
        with open(f"{config['log']}/writes-rank{rank}.txt", "a") as f:
            f.write(path + "\n")
        write(self, path, data)

    Store.write_bytes = recorded
    for t in config["trials"]:
        _train_worker({"trial": t, "store": config["store"]})


@pytest.mark.slow
def test_torch_trainer_with_two_cpu_workers_matches_one_process(tmp_path, monkeypatch):
    import sys

    import ray
    from ray import cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from raystudy.cluster.trials import CONTROLLER_POLL

    # SAM on the circles MLP (an empty shard) and on the BatchNorm CNN: the hardest two of the gloo test's five
    trials = [t for t in _trials(tmp_path).values() if t.regime == "sam"]
    ddp, single = Store(str(tmp_path / "ddp")), Store(str(tmp_path / "single"))
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import tests/
    monkeypatch.setenv(*CONTROLLER_POLL)  # as run_trial sets it before fit()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        TorchTrainer(_ray_loop, scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                     train_loop_config={"trials": [t.to_dict() for t in trials], "store": ddp.uri,
                                        "log": str(tmp_path)},
                     run_config=RunConfig(name="ddp", storage_path=str(tmp_path / "ray"))).fit()
    finally:
        ray.shutdown()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])

    written = sorted((tmp_path / "writes-rank0.txt").read_text().split())
    assert not (tmp_path / "writes-rank1.txt").exists()  # rank 1 wrote nothing
    assert written == sorted(r.path for t in trials for r in list_checkpoints(ddp, t.trial_id))
    assert len(written) == sum(len(t.checkpoints) for t in trials) == 4
    torch.set_num_threads(1)
    for t in trials:
        train_trial(t, single)
        task = load_trial_task(t)
        for ref in list_checkpoints(ddp, t.trial_id):
            state = load_checkpoint(ddp, ref.path)
            build_model(t, task).load_state_dict(state["model"])  # strict: loads into the plain model
            assert state["world_size"] == 2
        a, b = _final(single, t.trial_id), _final(ddp, t.trial_id)
        assert _max_diff(a["model"], b["model"]) < TOL, t.trial_id
        assert b["train_loss_running"] == pytest.approx(a["train_loss_running"], rel=TOL)
