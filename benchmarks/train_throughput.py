"""Training throughput: raystudy's loop against a plain PyTorch loop, same model and data, one run.

raystudy's loop runs through the functions ``train_trial`` uses (``TrainingData``, ``TrainStep``,
``train_epoch`` in ``raystudy.train.epoch``) on a synthetic CIFAR-shaped task: uint8 images
(N, 3, 32, 32), per-channel normalisation, ``crop4+flip`` augmentation, SGD with momentum. The plain
loop is what a straightforward script does: data on the host, each batch augmented and normalised
there and copied to the device (one copy per batch), fp32, SAM written out per parameter. Both
loops see the same batches. Prints img/s per configuration and

    ratio = img/s (raystudy) / img/s (plain loop, fp32, same step: base or SAM)

Goal: >= 1.5 on a GPU (data resident + bf16 + channels_last); on the CPU, >= 1.0.

    uv run python benchmarks/train_throughput.py [--device cuda] [--quick] [--model resnet18_cifar]
        [--batch 256] [--compile] [--repeats 3] [--model-args '{"width": 8}']

Imports only torch and raystudy's torch-only modules (no Ray, polars, pydantic, pyarrow), so a bare
GPU box with torch can run it from a checkout: ``PYTHONPATH=. python benchmarks/train_throughput.py``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from raystudy.models import create_model
from raystudy.seeding import derive_seed
from raystudy.tasks.base import Task
from raystudy.train.augment import augment
from raystudy.train.epoch import BatchSchedule, TrainingData, TrainStep, train_epoch
from raystudy.train.sam import SAM, bn_stats_frozen

RECIPE, LR, MOMENTUM, WD, RHO = "crop4+flip", 0.05, 0.9, 5e-4, 0.05
CIFAR_MEAN, CIFAR_STD = (125.3, 123.0, 113.9), (63.0, 62.1, 66.7)  # pixel units


def synthetic_cifar(n: int) -> Task:
    """``n`` random uint8 CIFAR-shaped images with 10 random labels (throughput only: nothing to learn)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (n,), generator=g)
    return Task("synthetic-cifar", "images", "classification", x, y, x[:256], y[:256], (3, 32, 32), 10,
                augment_recipe=RECIPE, mean=CIFAR_MEAN, std=CIFAR_STD, pad_fill=128.0)


def fresh_model(args, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return create_model(args.model, in_shape=(3, 32, 32), out_dim=10, **args.model_args).to(device)


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)


@dataclass
class Loop:
    epoch: Callable[[int], float]  # runs epoch e, returns its running loss
    info: Callable[[], str] = lambda: ""


def ours(args, task: Task, device: torch.device, sam: bool, precision: str, compile: bool) -> Loop:
    """raystudy's loop, set up and run as ``train_trial`` does."""
    model = fresh_model(args, device)
    opt = sgd(model)
    step = TrainStep(model, opt, nn.CrossEntropyLoss(), sam=SAM(model, opt, rho=RHO) if sam else None,
                     precision=precision, compile=compile)
    data = TrainingData(task, device)
    schedule = BatchSchedule(args.batch, shuffle_seed=0, augment_seed=0, recipe=RECIPE)
    return Loop(lambda epoch: train_epoch(step, data.batches(schedule, epoch)),
                lambda: f"channels_last={step.channels_last} data_on_device={data.resident}"
                        + (f" compiled={step.compiled}" if compile else ""))


def plain(args, task: Task, device: torch.device, sam: bool) -> Loop:
    """An epoch of the plain loop: host data, host augmentation and normalisation, a blocking copy
    per batch, fp32; the loss summed on the device and read once per epoch (no per-step sync)."""
    model = fresh_model(args, device)
    opt, loss_fn = sgd(model), nn.CrossEntropyLoss()
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    n = len(task.y_train)

    def sam_step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        params = [p for p in model.parameters() if p.grad is not None]
        with torch.no_grad():
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
            scale = RHO / (norm + 1e-12)
            originals = [p.detach().clone() for p in params]
            for p in params:
                p.add_(p.grad * scale)
        opt.zero_grad(set_to_none=True)
        with bn_stats_frozen(model):
            loss_fn(model(x), y).backward()
        with torch.no_grad():
            for p, w in zip(params, originals):
                p.copy_(w)
        opt.step()
        return loss.detach()

    def base_step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss.detach()

    def epoch(e: int) -> float:
        model.train()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed("order", 0, e)))
        gen = torch.Generator().manual_seed(derive_seed("augment", 0, e))
        total = torch.zeros((), dtype=torch.float64, device=device)
        for start in range(0, n, args.batch):
            idx = order[start:start + args.batch]
            x = (augment(task.x_train[idx], RECIPE, gen, fill=task.pad_fill).float() - mean) / std
            x, y = x.to(device), task.y_train[idx].to(device)
            total += (sam_step if sam else base_step)(x, y).double() * len(x)
        return total.item() / n

    return Loop(epoch)


def timed(loop: Loop, n: int, epochs: int, device: torch.device) -> tuple[float, float, float]:
    """(images per wall-clock second, images per CPU second of this process, last running loss)
    over ``epochs`` timed epochs, after one untimed warm-up epoch (first-use allocations, cuDNN
    choices, every torch.compile shape). CPU seconds are the fairer clock on a shared CPU machine."""
    loop.epoch(0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0, c0 = time.perf_counter(), time.process_time()
    for e in range(1, epochs + 1):
        loss = loop.epoch(e)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n * epochs / (time.perf_counter() - t0), n * epochs / (time.process_time() - c0), loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="fewer images and epochs")
    ap.add_argument("--model", default="resnet18_cifar")
    ap.add_argument("--model-args", type=json.loads, default={}, help='JSON, e.g. \'{"width": 8}\'')
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--n", type=int, help="training images (default 50,000; --quick: 10,240 GPU, 1,024 CPU)")
    ap.add_argument("--epochs", type=int, help="timed epochs (default 2; --quick 1)")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved repeats; the median is shown")
    ap.add_argument("--precisions", help="comma-separated (default: fp32,bf16 on CUDA with bf16; fp32 on the CPU)")
    ap.add_argument("--compile", action="store_true", help="also time raystudy's loop with torch.compile")
    ap.add_argument("--no-sam", action="store_true")
    ap.add_argument("--record", metavar="PROFILE",
                    help="append our fastest base-step img/s to raystudy/study/throughput.json under this device profile "
                         "(h100, a100, l4, ...), for --dry-run --device PROFILE")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: 1 on the CPU, torch's own on CUDA)")
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.threads or not cuda:
        torch.set_num_threads(args.threads or 1)
    n = args.n or (50_000 if not args.quick else 10_240 if cuda else 1_024)
    epochs = args.epochs or (1 if args.quick else 2)
    precisions = (args.precisions.split(",") if args.precisions
                  else ["fp32", "bf16"] if cuda and torch.cuda.is_bf16_supported() else ["fp32"])
    task = synthetic_cifar(n)
    name = (torch.cuda.get_device_name(device) if cuda else "CPU") + f", {torch.get_num_threads()} CPU thread(s)"
    print(f"{args.model} {args.model_args or ''} batch {args.batch}, {n} images x {epochs} epoch(s), "
          f"{RECIPE}, on {name}, torch {torch.__version__}")

    configs: dict[str, Callable[[], Loop]] = {}
    for sam in ([False] if args.no_sam else [False, True]):
        kind = "sam" if sam else "base"
        configs[f"plain {kind} fp32"] = lambda sam=sam: plain(args, task, device, sam)
        for precision in precisions:
            for compile in ([False, True] if args.compile else [False]):
                label = f"ours {kind} {precision}{' compiled' if compile else ''}"
                configs[label] = lambda sam=sam, p=precision, c=compile: ours(args, task, device, sam, p, c)
    rates: dict[str, list[float]] = {label: [] for label in configs}
    cpu_rates: dict[str, list[float]] = {label: [] for label in configs}
    notes: dict[str, str] = {}
    for r in range(args.repeats):  # interleaved, in alternating order: load spikes and drift hit all alike
        for label, build in (list(configs.items()) if r % 2 == 0 else reversed(configs.items())):
            loop = build()
            rate, cpu_rate, loss = timed(loop, n, epochs, device)
            rates[label].append(rate)
            cpu_rates[label].append(cpu_rate)
            # The last epoch's running loss: equal for ours and plain in fp32 on the CPU (same batches,
            # same arithmetic), close on a GPU (other kernels, channels_last).
            notes[label] = f"loss {loss:.6f} {loop.info()}"
            del loop
            if cuda:
                torch.cuda.empty_cache()
    tables = [("img/s", rates)] + ([] if cuda else [("img/cpu-s", cpu_rates)])
    print(f"{'configuration':<28}" + "".join(f"{name:>11}{'ratio':>7}" for name, _ in tables)
          + f"  (medians of {args.repeats}; ratio: vs plain fp32, same step)")
    for label in configs:
        ref = f"plain {label.split()[1]} fp32"
        cells = [(statistics.median(t[label]), statistics.median(t[ref])) for _, t in tables]
        print(f"{label:<28}" + "".join(f"{r:>11.0f}{r / r0:>7.2f}" for r, r0 in cells) + f"  {notes[label]}")
    if args.record:  # a trial's step as the study would run it: ours, no SAM, uncompiled, per precision
        from raystudy.study.cost import _config, record_throughput
        for precision in precisions:
            rate = statistics.median(rates[f"ours base {precision}"])
            record_throughput(args.record, _config(args.model, args.model_args, (3, 32, 32), 10, args.batch, precision),
                              rate, name.split(",")[0])
            print(f"recorded {args.model} batch {args.batch} {precision}: {rate:,.0f} img/s under profile {args.record}")

if __name__ == "__main__":
    main()
