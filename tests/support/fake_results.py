"""Fabricated but realistic result rows for the three families, written as Parquet like the measuring stage.

Values are simple formulas of (seed, regime, ...) so tests can compute expected means by hand:
digits/cnn test_acc = 90 + 2*seed + REGIME_ACC[regime]. Deliberate irregularities: the functions file has no
Hessian, ECE or batch_size values (an older schema), fisher_rao is null for (sam, seed 1), (wd, seed 3)
diverged (status "nonfinite", NaN metrics), and (base, seed 0)'s final ECE is re-measured in a later file.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl

PROVENANCE = dict(raystudy_version="0.1.0", torch_version="2.15.0", ray_version="2.60.0", device="cpu",
                  wall_s=1.5, measured_on="train", measure_n=500, bn_mode="stored", augmented=False)
COMPLEXITY = {"sphere": 1.0, "booth": 3.0, "three_hump_camel": 5.0, "himmelblau": 20.0, "rosenbrock": 80.0,
              "beale": 150.0, "rastrigin": 400.0}
RHOS = (5e-4, 5e-3, 5e-2, 5e-1)
REGIME_ACC = {"base": 0.0, "sam": 1.0, "wd": 0.5}
REGIME_HP = {"base": dict(weight_decay=0.0, sam_rho=None), "sam": dict(weight_decay=0.0, sam_rho=0.05),
             "wd": dict(weight_decay=5e-4, sam_rho=None)}
DIGITS_SEEDS = (0, 1, 2, 3)


def _row(block, family, task, model, regime, seed, step, final, **values) -> dict:
    trial_id = f"{block}-{task}-{model}-{regime}-s{seed}" + "".join(
        f"-{k}{values[k]}" for k in ("factor", "label_noise") if values.get(k) is not None)
    return dict(study="toy", block=block, family=family, task=task, model=model, regime=regime, seed=seed,
                trial_id=trial_id, step=step, epoch=step, status="ok", final=final, **PROVENANCE, **values)


def function_rows() -> list[dict]:
    """Family A: 7 targets x 2 seeds x 5 checkpoints; SAM-sharpness at 4 radii (scalar = rho 5e-3)."""
    rows = []
    for task, c in COMPLEXITY.items():
        for seed in (0, 1):
            for step in (0, 1, 10, 100, 1000):
                by_rho = [dict(rho=r, mean=c * (1 + np.log10(step + 1)) * (1 + seed / 10) * r ** 0.5, std=0.1,
                               median=c, min=0.0, max=2 * c) for r in RHOS]
                train, test = 10.0 / (step + 1), 12.0 / (step + 1)
                rows.append(_row("functions", "functions", task, "mlp", "base", seed, step, step == 1000,
                                 lr=1e-3, batch_size=None, optimizer="adam", epochs=1000, train_loss=train,
                                 test_loss=test, train_acc=None, gen_gap=test - train, target_complexity=c,
                                 target_variance=3.0 * c, target_shape_complexity=c / 3.0,
                                 sam_sharpness=by_rho[1]["mean"], sam_sharpness_std=0.1,
                                 sam_sharpness_by_rho=by_rho))
    return rows


def _density(center: float, grid: np.ndarray) -> list[float]:
    d = np.exp(-0.5 * (grid - center) ** 2) + 0.2 * np.exp(-0.5 * (grid - 3 * center) ** 2)
    return (d / np.trapezoid(d, grid)).tolist()


def _hessian(scale: float, wide: bool = False) -> dict:
    grid = np.linspace(-1.0, 12.0 if wide else 10.0, 80 if wide else 64)
    return dict(hessian_lambda_max=3 * scale, hessian_lambda_min=-0.1 * scale, hessian_trace=20 * scale,
                hessian_trace_se=0.5, hessian_topk=[3 * scale, 2 * scale], hessian_n_hvp=120,
                hessian_density_grid=grid.tolist(), hessian_density=_density(scale, grid))


def circle_rows() -> list[dict]:
    """Family B: factor sweep (3 factors x 3 seeds) and a random-label block (factor 0.5, p in {0, 0.5})."""
    rows = []
    for block, settings in (("circles", [(f, None) for f in (0.3, 0.6, 0.9)]),
                            ("circles_noise", [(0.5, p) for p in (0.0, 0.5)])):
        for factor, noise in settings:
            for seed in (0, 1, 2):
                for epoch, final in ((0, False), (300, True)):
                    sharp = (1 + 5 * factor + 4 * (noise or 0)) * (1 + 0.05 * seed)
                    rows.append(_row(block, "circles", "circles", "mlp", "base", seed, epoch, final, factor=factor,
                                     label_noise=noise, lr=0.01, batch_size=5, momentum=0.9, optimizer="sgd",
                                     epochs=300, train_loss=0.01, test_loss=0.02, train_acc=100.0,
                                     test_acc=100.0 - 10 * factor - seed, gen_gap=10 * factor + seed,
                                     fisher_rao=sharp, relative_flatness=0.1 * sharp, ece=0.01,
                                     **_hessian(sharp)))
    return rows


def digit_rows() -> list[dict]:
    """Family C: digits x cnn x {base, sam, wd} x 4 seeds x 2 checkpoints, with Hessian columns."""
    rows = []
    for regime in ("base", "sam", "wd"):
        for seed in DIGITS_SEEDS:
            for epoch, final in ((5, False), (10, True)):
                acc = 90.0 + 2 * seed + REGIME_ACC[regime]
                sharp = (1.0 + REGIME_ACC[regime]) * (1 + 0.1 * seed)
                row = _row("digits", "images", "digits", "cnn", regime, seed, epoch, final, lr=0.01,
                           batch_size=64, momentum=0.9, optimizer="sgd", epochs=10, augment=False,
                           label_noise=None, train_loss=0.05, test_loss=0.3, train_acc=99.0, test_acc=acc,
                           gen_gap=99.0 - acc, ece=0.5 if (regime, seed) == ("base", 0) else 0.02 + 0.01 * seed,
                           fisher_rao=None if (regime, seed) == ("sam", 1) else 2.0 * sharp,
                           relative_flatness=0.3 * sharp, sam_sharpness=0.01 * sharp, sam_sharpness_std=0.001,
                           **REGIME_HP[regime], **_hessian(sharp, wide=regime == "sam"))
                if (regime, seed, final) == ("wd", 3, True):
                    row.update(status="nonfinite", train_loss=float("nan"), test_acc=None, gen_gap=None,
                               fisher_rao=float("nan"))
                rows.append(row)
    return rows


def write_study(root: Path, name: str = "toy") -> Path:
    """Write the fabricated rows as a study directory root/name with results/ in four Parquet files."""
    study = root / name
    files = {"functions/part-0.parquet": function_rows(), "circles/part-0.parquet": circle_rows(),
             "digits/part-0.parquet": digit_rows()}
    for i, (rel, rows) in enumerate(files.items()):
        path = study / "results" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        frame = pl.DataFrame(rows, infer_schema_length=None)
        if rel.startswith("functions"):  # an older writer: no ray_version column at all
            frame = frame.drop("ray_version")
        frame.write_parquet(path)
        os.utime(path, ns=(1_000_000_000 * (i + 1),) * 2)
    remeasured = [r for r in digit_rows() if (r["regime"], r["seed"], r["final"]) == ("base", 0, True)]
    remeasured[0]["ece"] = 0.05
    path = study / "results" / "digits" / "remeasure.parquet"
    pl.DataFrame(remeasured, infer_schema_length=None).write_parquet(path)
    os.utime(path, ns=(10_000_000_000,) * 2)
    return study
