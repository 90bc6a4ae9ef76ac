"""Tasks: the seven targets against hand values, data generation, label noise, the registry."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits, make_circles
from sklearn.model_selection import train_test_split

from raystudy.tasks import (
    FAMILIES, FUNCTIONS, apply_label_noise, batches, list_tasks, load_task, target_complexity,
)
from raystudy.tasks.functions import drop_rows_in

# (function, point, value computed by hand from docs/PROTOCOL.md's formulas)
HAND_VALUES = [
    ("sphere", (1.0, 2.0), 5.0),
    ("booth", (0.0, 0.0), 74.0),  # 7^2 + 5^2
    ("booth", (1.0, 3.0), 0.0),  # global minimum
    ("three_hump_camel", (1.0, 1.0), 2 - 1.05 + 1 / 6 + 1 + 1),
    ("himmelblau", (0.0, 0.0), 170.0),  # 11^2 + 7^2
    ("himmelblau", (3.0, 2.0), 0.0),
    ("rosenbrock", (0.0, 0.0), 1.0),
    ("rosenbrock", (-1.0, 2.0), 4.0 + 100.0),  # (1+1)^2 + 100 (2-1)^2
    ("beale", (0.0, 0.0), 1.5**2 + 2.25**2 + 2.625**2),
    ("beale", (3.0, 0.5), 0.0),
    ("rastrigin", (0.0, 0.0), 0.0),
    ("rastrigin", (0.5, 0.0), 20 + 0.25 + 10 - 10),  # cos(pi) = -1, cos(0) = 1
]


@pytest.mark.parametrize("name,point,value", HAND_VALUES)
def test_targets_match_hand_values(name, point, value):
    out = FUNCTIONS[name](torch.tensor([point], dtype=torch.float64))
    assert out.shape == (1, 1)
    assert out.item() == pytest.approx(value, abs=1e-9)


def test_seven_functions_listed():
    assert list_tasks("functions") == [
        "sphere", "booth", "three_hump_camel", "himmelblau", "rosenbrock", "beale", "rastrigin"]
    assert FAMILIES == ("functions", "circles", "images")


def test_function_data_shared_across_targets_and_seeded():
    rng_before = torch.random.get_rng_state()
    a = load_task("functions", "sphere", seed=3, n_train=500, n_test=300)
    b = load_task("functions", "rastrigin", seed=3, n_train=500, n_test=300)
    c = load_task("functions", "sphere", seed=4, n_train=500, n_test=300)
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, b.x_test)
    assert not torch.equal(a.x_train, c.x_train)
    assert a.x_train.dtype == torch.float32 and a.y_train.dtype == torch.float32
    assert a.x_train.shape == (500, 2) and a.y_train.shape == (500, 1)
    assert a.x_test.shape == (300, 2) and a.y_test.shape == (300, 1)
    assert a.x_train.min() >= -3.5 and a.x_train.max() <= 3.5
    # Train drawn first, then test, from a generator seeded with the seed alone.
    gen = torch.Generator().manual_seed(3)
    assert torch.equal(a.x_train, torch.rand(500, 2, generator=gen) * 7 - 3.5)
    assert torch.equal(a.x_test, torch.rand(300, 2, generator=gen) * 7 - 3.5)
    x = a.x_train.double().numpy()
    assert np.allclose(b.y_train[:, 0].numpy(), 20 + (x**2).sum(1) - 10 * np.cos(2 * np.pi * x).sum(1), atol=1e-4)
    assert (a.kind, a.out_dim, a.in_shape, a.augment_recipe) == ("regression", 1, (2,), None)
    assert a.info["n_test_duplicates_dropped"] == 0 and a.info["data_seed"] == 3


def test_duplicate_test_rows_dropped():
    ref = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    x = torch.tensor([[2.0, 3.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    assert torch.equal(drop_rows_in(x, ref), torch.tensor([[1.0, 0.0], [5.0, 5.0]]))


def test_target_complexity_sphere_closed_form_and_booth_by_hand():
    axis = np.linspace(-3.5, 3.5, 51)
    gx, gy = np.meshgrid(axis, axis, indexing="ij")
    # sphere: |grad|^2 = 4 (x^2 + y^2)
    assert target_complexity("sphere", n_grid=51) == pytest.approx(np.mean(4 * (gx**2 + gy**2)), rel=1e-12)
    u, v = gx + 2 * gy - 7, 2 * gx + gy - 5
    booth = np.mean((2 * u + 4 * v) ** 2 + (4 * u + 2 * v) ** 2)
    assert target_complexity("booth", n_grid=51) == pytest.approx(booth, rel=1e-12)
    assert target_complexity("rastrigin", n_grid=51) > target_complexity("sphere", n_grid=51)


def test_circles_match_sklearn_split_and_ignore_trial_seed():
    t = load_task("circles", "circles", seed=7, factor=0.6)
    x, y = make_circles(n_samples=100, noise=0.0, factor=0.6, shuffle=True, random_state=0)
    assert np.allclose(t.x_train.numpy(), x[:50]) and np.allclose(t.x_test.numpy(), x[50:])
    assert np.array_equal(t.y_train.numpy(), y[:50]) and np.array_equal(t.y_test.numpy(), y[50:])
    assert t.y_train.dtype == torch.int64 and t.x_train.dtype == torch.float32
    radii = torch.linalg.vector_norm(torch.cat([t.x_train, t.x_test]), dim=1)
    assert torch.allclose(radii, torch.where(radii > 0.8, 1.0, 0.6), atol=1e-6)
    other = load_task("circles", "circles", seed=99, factor=0.6)
    assert torch.equal(other.x_train, t.x_train) and torch.equal(other.y_train, t.y_train)
    assert (t.kind, t.out_dim, t.info["n_labels_changed"]) == ("classification", 2, 0)
    with pytest.raises(ValueError):
        load_task("circles", "circles", seed=0, factor=1.0)


def test_circles_label_noise_train_only_counted_and_deterministic():
    clean = load_task("circles", "circles", seed=0, factor=0.5)
    full = load_task("circles", "circles", seed=0, factor=0.5, label_noise=1.0)
    again = load_task("circles", "circles", seed=5, factor=0.5, label_noise=1.0)
    other = load_task("circles", "circles", seed=0, factor=0.5, label_noise=1.0, data_seed=1)
    assert torch.equal(full.y_test, clean.y_test)
    assert full.info["n_labels_changed"] == int((full.y_train != clean.y_train).sum())
    assert 10 <= full.info["n_labels_changed"] <= 40  # Binomial(50, 1/2)
    assert torch.equal(full.y_train, again.y_train)
    assert not torch.equal(full.y_train, other.y_train)  # data_seed reseeds the noise (2^-50 to clash)


def test_label_noise_rate_and_nesting():
    y = torch.arange(20000) % 10
    with torch.random.fork_rng():
        rng = torch.random.get_rng_state()
        low, n_low = apply_label_noise(y, 0.3, 10, data_seed=0)
        assert torch.equal(torch.random.get_rng_state(), rng)
    high, n_high = apply_label_noise(y, 0.6, 10, data_seed=0)
    assert n_low / len(y) == pytest.approx(0.3 * 0.9, abs=0.01)  # replacement may hit the true class
    assert n_high / len(y) == pytest.approx(0.6 * 0.9, abs=0.01)
    changed_low = low != y
    assert torch.equal(high[changed_low], low[changed_low])  # nested: p=0.3 changes persist at 0.6
    assert torch.equal(apply_label_noise(y, 0.0, 10, 0)[0], y)
    with pytest.raises(ValueError):
        apply_label_noise(y, 1.5, 10, 0)


def test_digits_fixed_split_and_scaling():
    t = load_task("images", "digits", seed=3)
    u = load_task("images", "digits", seed=8)
    bunch = load_digits()
    assert t.x_train.shape == (1347, 1, 8, 8) and t.x_test.shape == (450, 1, 8, 8)
    assert torch.equal(t.x_train, u.x_train) and torch.equal(t.y_test, u.y_test)
    assert torch.equal(load_task("images", "digits", seed=0, data_root="/nowhere").x_train, t.x_train)
    assert 0.0 <= t.x_train.min() and t.x_train.max() == 1.0
    # Every image is a bundled one divided by 16, with its own label.
    lookup = {img.tobytes(): lab for img, lab in zip((bunch.images / 16).astype("float32"), bunch.target)}
    assert all(lookup[img.numpy().tobytes()] == lab for img, lab in zip(t.x_test[:, 0], t.y_test.tolist()))
    _, _, y_tr, y_te = train_test_split(bunch.images, bunch.target, test_size=0.25, random_state=0,
                                        stratify=bunch.target)
    assert np.array_equal(t.y_train.numpy(), y_tr) and np.array_equal(t.y_test.numpy(), y_te)
    assert (t.family, t.out_dim, t.in_shape, t.augment_recipe) == ("images", 10, (1, 8, 8), "shift1")
    noisy = load_task("images", "digits", seed=0, label_noise=0.5)
    assert noisy.info["n_labels_changed"] == int((noisy.y_train != t.y_train).sum()) > 0
    assert torch.equal(noisy.y_test, t.y_test)


def test_batches_order_and_remainder():
    x, y = torch.arange(10.0)[:, None], torch.arange(10)
    parts = batches(x, y, 4)
    assert [len(b[0]) for b in parts] == [4, 4, 2]
    assert torch.equal(torch.cat([b[0] for b in parts]), x) and torch.equal(parts[2][1], y[8:])
    (full,) = batches(x, y, None)
    assert full[0] is x
    with pytest.raises(ValueError):
        batches(x, y, 0)


def test_real_image_task_without_files_is_one_line_value_error(tmp_path):
    with pytest.raises(ValueError) as err:  # DatasetError is a ValueError
        load_task("images", "tinyimagenet", seed=0, data_root=str(tmp_path))
    assert str(err.value) == (f"{tmp_path / 'tiny-imagenet-200'}: missing; run: python -m raystudy.data "
                              f"fetch tinyimagenet --root {tmp_path}")


def test_registry_errors():
    with pytest.raises(KeyError, match="functions, circles, images"):
        load_task("audio", "x", seed=0)
    with pytest.raises(KeyError, match="sphere"):
        load_task("functions", "ackley", seed=0)
    assert list_tasks("images") == ["digits", "cifar10", "cifar100", "tinyimagenet"]
    with pytest.raises(KeyError, match="digits, cifar10, cifar100, tinyimagenet"):
        load_task("images", "svhn", seed=0)
    with pytest.raises(TypeError):
        load_task("circles", "circles", seed=0, factr=0.5)
    with pytest.raises(TypeError):
        load_task("images", "cifar10", seed=0, data_rot="/data")
    assert math.isfinite(target_complexity("beale", n_grid=11))
