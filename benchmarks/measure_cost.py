"""What measuring one checkpoint costs, metric by metric: ResNet-18 (CIFAR stem) on --images CIFAR-shaped
training images, each metric timed as the study runs it (``raystudy.measure.geometry``), and compared with
the goals of issue 7 (on a GPU: SAM-sharpness with 100 draws <= 5 s, the Hessian suite <= 25 s).

    python benchmarks/measure_cost.py [--device cuda] [--images 5120] [--quick] [--model resnet18_cifar]

Imports torch, timm and raystudy's numerical modules only (no Ray, polars or pydantic), so it runs on a bare
GPU box: ``PYTHONPATH=. python benchmarks/measure_cost.py --device cuda``. --quick: 512 images, a small CNN,
10 draws (a CPU smoke run; its seconds say nothing about a GPU). Each metric runs once after a warm-up call
on a few images; seconds include every forward and backward pass the metric needs, synchronised on CUDA.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from raystudy.geometry import (HessianOperator, fisher_rao_norm, hessian_density, hessian_eigenvalues,
                               hessian_trace, relative_flatness, sam_sharpness_sweep)
from raystudy.models import create_model

GOALS = {"sam_sharpness": 5.0, "hessian": 25.0}  # seconds on a GPU (issue 7, part 5)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn, *args, **kwargs) -> tuple[float, object]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    _sync(device)
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=5120)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--model", default="resnet18_cifar")
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--hessian-images", type=int, default=512, help="the Hessian suite's own sample")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.quick:
        args.images, args.hessian_images, args.draws, args.model = 512, 128, 10, "cnn_bn"
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model(args.model, in_shape=(3, 32, 32), out_dim=10).to(device).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.images, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (args.images,), generator=gen)
    data = [(x[i:i + args.batch].to(device), y[i:i + args.batch].to(device)) for i in range(0, args.images, args.batch)]
    small = [(a[:8], b[:8]) for a, b in data[:1]]
    hess = data[: max(1, args.hessian_images // args.batch)]
    if args.hessian_images < args.batch:
        hess = [(data[0][0][:args.hessian_images], data[0][1][:args.hessian_images])]
    loss = nn.CrossEntropyLoss()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.model} ({n_params / 1e6:.2f}M parameters) on {device} "
          f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), {args.images} images, "
          f"batch {args.batch}, torch {torch.__version__}")

    fisher_rao_norm(model, small), relative_flatness(model, loss, small)  # warm-up: kernels, vmap
    sam_sharpness_sweep(model, loss, small, [0.005], n_draws=2, seed=0)
    rows = []
    s, _ = timed(device, fisher_rao_norm, model, data)
    rows.append(("fisher_rao", s, ""))
    s, _ = timed(device, relative_flatness, model, loss, data)
    rows.append(("relative_flatness", s, ""))
    s, sweep = timed(device, sam_sharpness_sweep, model, loss, data, [0.005], n_draws=args.draws, seed=0)
    rows.append(("sam_sharpness", s, f"{args.draws} draws, {sweep[0].precision}, {sweep[0].n_forward} passes"))

    def suite() -> int:
        op = HessianOperator(model, loss, hess)
        eig = hessian_eigenvalues(op, k=1, which="both", seed=0)
        tr = hessian_trace(op, n_hvp=30, seed=0)
        dens = hessian_density(op, n_runs=2, n_steps=30, seed=0)
        return eig.n_hvp + tr.n_hvp + dens.n_hvp, op.backend

    s, (n_hvp, backend) = timed(device, suite)
    rows.append(("hessian", s, f"lambda max/min, trace 30 Hv, density 2 x 30 on {args.hessian_images} images: "
                               f"{n_hvp} Hv ({backend})"))
    print(f"{'metric':<20}{'seconds':>10}  goal")
    for name, seconds, note in rows:
        goal = GOALS.get(name)
        verdict = "" if goal is None or device.type != "cuda" else ("met" if seconds <= goal else "MISSED")
        goal_text = f"<= {goal:g} s {verdict}" if goal else ""
        print(f"{name:<20}{seconds:>10.2f}  {goal_text:<18} {note}")
    if device.type != "cuda":
        print("(the goals are for a GPU; on this device the seconds only compare runs with each other)")


if __name__ == "__main__":
    main()
