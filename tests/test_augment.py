"""Augmentation: shapes, identities, determinism, a hand-checked shift, flip frequency."""
from __future__ import annotations

import pytest
import torch

from raystudy.train.augment import augment, parse_recipe, random_shift


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_shapes_and_identities():
    x = torch.rand(5, 3, 6, 7)
    for recipe in ("shift1", "crop4+flip", "shift2+flip", "flip"):
        assert augment(x, recipe, gen()).shape == x.shape
    assert augment(x, None, gen()) is x
    assert torch.equal(augment(x, "shift0", gen()), x)
    assert torch.equal(augment(x, "crop0", gen()), x)


def test_same_generator_seed_same_batch_and_global_rng_untouched():
    x = torch.rand(16, 1, 8, 8)
    rng = torch.random.get_rng_state()
    a = augment(x, "crop4+flip", gen(3))
    b = augment(x, "crop4+flip", gen(3))
    c = augment(x, "crop4+flip", gen(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.random.get_rng_state(), rng)


def test_shift_of_tiny_image_by_hand():
    x = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)  # [[1,2,3],[4,5,6],[7,8,9]]
    # Offsets drawn as the function does: row offsets for all samples, then column offsets.
    g = gen(5)
    top = torch.randint(0, 3, (1,), generator=g).item()
    left = torch.randint(0, 3, (1,), generator=g).item()
    padded = [[0.0] * 5] + [[0.0, *row, 0.0] for row in x[0, 0].tolist()] + [[0.0] * 5]
    expected = [[padded[top + i][left + j] for j in range(3)] for i in range(3)]
    assert random_shift(x, 1, gen(5))[0, 0].tolist() == expected
    # All 9 offsets of one image, enumerated by brute force over many samples.
    many = random_shift(x.expand(400, 1, 3, 3), 1, gen(0))
    seen = {tuple(img.flatten().tolist()) for img in many}
    assert len(seen) == 9
    assert (0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 0.0, 4.0, 5.0) in seen  # moved down-right by one
    assert (5.0, 6.0, 0.0, 8.0, 9.0, 0.0, 0.0, 0.0, 0.0) in seen  # moved up-left by one


def test_per_sample_offsets_and_content_preserved():
    x = torch.rand(64, 2, 8, 8)
    out = augment(x, "shift2", gen(1))
    # A shift by at most 2 keeps the central 4x4 block of every image somewhere in the output.
    for xi, oi in zip(x, out):
        assert any(torch.equal(oi[:, 2 + dy:6 + dy, 2 + dx:6 + dx], xi[:, 2:6, 2:6])
                   for dy in range(-2, 3) for dx in range(-2, 3))
    assert len({tuple(o.flatten()[:5].tolist()) for o in out}) > 1  # not one offset for the batch


def test_flips_happen_about_half_the_time():
    x = torch.rand(2000, 1, 4, 4)
    out = augment(x, "flip", gen(2))
    flipped = torch.all((out == x.flip(-1)).flatten(1), dim=1)
    kept = torch.all((out == x).flatten(1), dim=1)
    assert torch.all(flipped | kept)
    assert 0.45 < flipped.float().mean().item() < 0.55  # Binomial(2000, 0.5): sd 0.011


def test_recipe_parsing():
    assert parse_recipe(None) == [] and parse_recipe("") == []
    assert parse_recipe("crop4+flip") == [("shift", 4), ("flip", 0)]
    for bad in ("rotate", "shift", "crop-1", "flip2"):
        with pytest.raises(ValueError):
            parse_recipe(bad)
    with pytest.raises(ValueError):
        augment(torch.rand(3, 8, 8), "shift1", gen())
