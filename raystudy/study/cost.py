"""What a study will cost before it runs: the grid per block, and device-hours from a short measured
throughput (``python -m raystudy.run STUDY.yaml --dry-run``). No Ray, no dataset files.

Training throughput is measured, not assumed: for every distinct (model, model_args, input shape,
classes, batch size, precision) the planner times a few optimiser steps on random inputs of the task's
shape on this machine's device (a GPU if there is one). A trial's training time is then
``epochs x n_train x passes / throughput`` with 2 passes per step under SAM. Measurement time is not
estimated (it depends on the metrics' settings; ``benchmarks/measure_cost.py`` times them).
"""
from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from raystudy import models, tasks
from raystudy.trial import Trial


@dataclass(frozen=True)
class BlockCost:
    """One block: trial and checkpoint counts, images trained on (epochs x n_train, SAM counted twice),
    the measured throughput (images per second, per configuration) and device-hours of training."""
    block: str
    trials: int
    checkpoints: int
    images: float
    throughput: dict[str, float | None]
    device_hours: float
    unmeasured: list[str] = field(default_factory=list)  # configurations a device profile has no number for


def throughput(model: str, model_args: dict, in_shape: tuple, out_dim: int, batch_size: int,
               device: torch.device, precision: str = "fp32", steps: int = 5) -> float:
    """Training images per second of one plain SGD step (forward, backward, update) at ``batch_size`` on
    random inputs, median of ``steps`` timed steps after two warm-up steps. On the CPU the batch is capped
    at 64 and the per-image cost scaled (a ResNet-18 step at 256 takes seconds there). Pretrained
    weights are never downloaded: the architecture is what costs. Cost: 2 + steps optimiser steps."""
    args = {k: v for k, v in model_args.items() if k not in ("pretrained", "pretrained_file")}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = models.create_model(model, in_shape=in_shape, out_dim=out_dim, **args).to(device)
    batch = batch_size if device.type != "cpu" else min(batch_size, 64)
    x = torch.randn(batch, *in_shape, device=device)
    y = torch.randint(0, out_dim, (batch,), device=device)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss() if out_dim > 1 else torch.nn.MSELoss()
    if out_dim == 1:
        y = torch.randn(batch, 1, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    times = []
    for i in range(steps + 2):
        _sync(device)
        t0 = time.perf_counter()
        with autocast:
            loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return batch / sorted(times)[len(times) // 2]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


PROFILES = Path(__file__).with_name("throughput.json")


def _config(model: str, model_args: dict, in_shape: tuple, out_dim: int, batch: int, precision: str) -> dict:
    return {"model": model, "model_args": {k: v for k, v in model_args.items() if k not in ("pretrained", "pretrained_file")},
            "in_shape": list(in_shape), "out_dim": out_dim, "batch": batch, "precision": precision}


def profile_names(table: Path | None = None) -> list[str]:
    """Device profiles the throughput table knows (``--dry-run --device NAME``)."""
    return sorted(json.loads((table or PROFILES).read_text())["profiles"])


def profile_throughput(profile: str, config: dict, table: Path | None = None) -> tuple[float, int] | None:
    """Measured images/s of ``config`` (``_config``) on device ``profile`` and the batch it was measured at:
    the same batch if recorded, else the nearest recorded batch of the same model, arguments, input and
    precision (throughput per image changes little with batch once a GPU is busy). None if not measured."""
    entries = json.loads((table or PROFILES).read_text())["profiles"][profile]["entries"]
    same = [e for e in entries if all(e[k] == config[k] for k in ("model", "model_args", "in_shape", "out_dim",
                                                                   "precision"))]
    if not same:
        return None
    best = min(same, key=lambda e: (abs(e["batch"] - config["batch"]), -e["batch"]))
    return float(best["img_per_s"]), int(best["batch"])


def record_throughput(profile: str, config: dict, img_per_s: float, device: str, table: Path | None = None) -> None:
    """Add (or replace) the measurement of ``config`` on ``profile`` in the table, with its provenance."""
    table = table or PROFILES
    data = json.loads(table.read_text())
    prof = data["profiles"].setdefault(profile, {"device": device, "entries": []})
    keep = [e for e in prof["entries"] if any(e[k] != config[k] for k in config)]
    prof["entries"] = keep + [{**config, "img_per_s": round(img_per_s, 1), "device": device,
                               "torch": torch.__version__, "measured": time.strftime("%Y-%m-%d"),
                               "by": "benchmarks/train_throughput.py"}]
    table.write_text(json.dumps(data, indent=1) + "\n")


def study_cost(trials: list[Trial], device: torch.device, profile: str | None = None) -> list[BlockCost]:
    """Per block, in study order: counts, images and device-hours at throughput measured on ``device``, or,
    with ``profile``, as recorded for that device profile in the throughput table (a configuration it has
    not measured gets no hours: ``BlockCost.unmeasured`` names it). Each distinct configuration is timed
    (or looked up) once (see ``throughput``)."""
    speed: dict[tuple, float | None] = {}
    by_block: dict[str, list[Trial]] = defaultdict(list)
    for t in trials:
        by_block[t.block].append(t)
    out = []
    for block, mine in by_block.items():
        images = seconds = 0.0
        labels: dict[str, float | None] = {}
        unmeasured: set[str] = set()
        for t in mine:
            in_shape, out_dim = tasks.task_shape(t.family, t.task)
            n = tasks.train_size(t.family, t.task, t.n_train)
            batch = t.batch_size or n
            precision = getattr(t, "precision", "fp32")
            key = (t.model, repr(sorted(t.model_args.items())), in_shape, out_dim, batch, precision)
            if key not in speed:
                if profile is None:
                    speed[key] = throughput(t.model, t.model_args, in_shape, out_dim, batch, device, precision)
                else:
                    found = profile_throughput(profile, _config(t.model, t.model_args, in_shape, out_dim, batch,
                                                                precision))
                    speed[key] = found[0] if found else None
            label = f"{t.model} {'x'.join(map(str, in_shape))} -> {out_dim}, batch {batch}, {precision}"
            labels[label] = speed[key]
            trained = t.epochs * n * (2 if t.sam_rho is not None else 1)
            images += trained
            if speed[key]:
                seconds += trained / speed[key]
            else:
                unmeasured.add(label)
        out.append(BlockCost(block, len(mine), sum(len(t.checkpoints) for t in mine), images, labels,
                             seconds / 3600, sorted(unmeasured)))
    return out


def format_cost(costs: list[BlockCost], device: torch.device, profile: str | None = None) -> str:
    """The dry-run report: one line per block, its throughputs, and the totals."""
    if profile:
        name = f"{json.loads(PROFILES.read_text())['profiles'][profile]['device']} (profile {profile}, recorded throughput)"
    else:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (this machine)"
    lines = [f"{'block':<36}{'trials':>8}{'ckpts':>8}{'images':>12}{'train h':>10}"]
    for c in costs:
        hours = f"{c.device_hours:>10.3g}" if not c.unmeasured else f"{'?':>10}"
        lines.append(f"{c.block:<36}{c.trials:>8}{c.checkpoints:>8}{c.images:>12.3g}{hours}")
        lines += [f"    {label}: " + (f"{v:,.0f} img/s" if v else "not measured on this profile")
                  for label, v in c.throughput.items()]
    total = sum(c.device_hours for c in costs)
    missing = sorted({u for c in costs for u in c.unmeasured})
    measured = any(v for c in costs for v in c.throughput.values())  # some configuration has a throughput
    # An unmeasured configuration makes the total unknown: never printed as 0, nor as the whole when it is a part.
    hours = (f"{_hours(total)} of training" if not missing else
             f"training time unknown (at least {_hours(total)} for the measured configurations)" if measured else
             "training time unknown (no configuration of this study measured)")
    lines.append(f"total: {sum(c.trials for c in costs)} trials, {sum(c.checkpoints for c in costs)} checkpoints, "
                 f"{hours} on one {name} at the single-trial throughput"
                 " (measurement not included; trials packed several to a GPU share it, so wall time on a "
                 "cluster is this divided by the number of GPUs, at best)")
    if missing:
        lines.append(f"not measured on {profile}: {len(missing)} configuration(s); on such a GPU run "
                     "`python benchmarks/train_throughput.py --device cuda --model MODEL --batch B --record "
                     f"{profile}` for each, or --dry-run --device cpu to time them here")
    return "\n".join(lines)


def _hours(h: float) -> str:
    return f"{h:.3g} device-hours" if h >= 1 or h == 0 else f"{h * 60:.3g} device-minutes" if h * 60 >= 1 \
        else f"{math.ceil(h * 3600)} device-seconds"
