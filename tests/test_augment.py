"""Augmentation: shapes, identities, determinism, a hand-checked shift, flip frequency, padding
fill, and random resized crops against torchvision."""
from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from raystudy.train.augment import (
    augment, parse_recipe, random_shift, resized_crop, resized_crop_boxes,
)


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
    assert parse_recipe("rrc64+flip") == [("rrc", 64), ("flip", 0)]
    for bad in ("rotate", "shift", "crop-1", "flip2", "rrc", "rrc0"):
        with pytest.raises(ValueError):
            parse_recipe(bad)
    with pytest.raises(ValueError):
        augment(torch.rand(3, 8, 8), "shift1", gen())


def test_padding_uses_the_fill_value_by_hand():
    x = torch.full((1, 1, 3, 3), 7, dtype=torch.uint8)
    g = gen(5)
    top = torch.randint(0, 3, (1,), generator=g).item()
    left = torch.randint(0, 3, (1,), generator=g).item()
    padded = [[128] * 5] + [[128, 7, 7, 7, 128] for _ in range(3)] + [[128] * 5]
    expected = [[padded[top + i][left + j] for j in range(3)] for i in range(3)]
    out = random_shift(x, 1, gen(5), fill=128)
    assert out.dtype == torch.uint8 and out[0, 0].tolist() == expected
    # Over many samples: only the image value and the fill appear, and the fill does appear; the
    # pixels an image keeps sit in one block whose size matches its offset.
    many = augment(torch.full((500, 3, 32, 32), 7, dtype=torch.uint8), "crop4+flip", gen(1), fill=128)
    assert set(many.unique().tolist()) == {7, 128}
    kept = (many[:, 0] == 7)
    rows, cols = kept.any(2).sum(1), kept.any(1).sum(1)
    assert torch.equal(kept.sum((1, 2)), rows * cols) and rows.min() >= 28 and cols.min() >= 28
    assert (rows < 32).float().mean() > 0.8  # P(row offset != 0) = 8/9
    # Default fill is 0: digits' "shift1" is unchanged.
    assert torch.equal(augment(x.float(), "shift1", gen(5)), random_shift(x.float(), 1, gen(5), fill=0.0))


def test_resized_crop_by_hand_and_against_torchvision():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    box = [torch.tensor([v]) for v in (0, 0, 2, 2)]
    # 2 -> 4 upsampling, half-pixel centres, edges clamped: source columns 0, 0.25, 0.75, 1.
    row0 = [1.0, 1.25, 1.75, 2.0]
    up = resized_crop(x, *box, size=4)[0, 0]
    assert up[0].tolist() == row0 and up[:, 0].tolist() == [1.0, 1.5, 2.5, 3.0]
    assert torch.equal(resized_crop(x, *box, size=2), x)  # the whole image at its own size
    img = torch.rand(1, 3, 64, 64, generator=gen(0))
    for top, left, h, w in ((0, 0, 64, 64), (5, 7, 20, 30), (10, 3, 40, 17), (60, 61, 4, 3)):
        ours = resized_crop(img, *[torch.tensor([v]) for v in (top, left, h, w)], size=64)[0]
        ref = TF.resized_crop(img[0], top, left, h, w, [64, 64],
                              interpolation=InterpolationMode.BILINEAR, antialias=True)
        assert torch.allclose(ours, ref, atol=1e-5)
    u8 = (img * 255).to(torch.uint8)
    ours = resized_crop(u8, *[torch.tensor([v]) for v in (5, 7, 20, 30)], size=64)
    ref = TF.resized_crop(u8[0], 5, 7, 20, 30, [64, 64], interpolation=InterpolationMode.BILINEAR,
                          antialias=True)
    assert ours.dtype == torch.uint8 and (ours[0].int() - ref.int()).abs().max() <= 1


def test_resized_crop_boxes_follow_torchvision_defaults():
    top, left, h, w = resized_crop_boxes(20000, 64, 64, gen(0))
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 64).all() and (left + w <= 64).all()
    assert (h >= 1).all() and (w >= 1).all()
    # Sides are rounded to whole pixels, so scale and ratio hold up to half a pixel per side.
    assert ((w + 0.5) * (h + 0.5) >= 0.08 * 4096).all() and ((w - 0.5) * (h - 0.5) <= 4096).all()
    assert ((w + 0.5) / (h - 0.5) >= 3 / 4).all() and ((w - 0.5) / (h + 0.5) <= 4 / 3).all()
    # Same law as torchvision's get_params (10 tries, then a central crop): compare moments.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        ref = torch.tensor([T.RandomResizedCrop.get_params(torch.empty(3, 64, 64), [0.08, 1.0], [3 / 4, 4 / 3])
                            for _ in range(20000)], dtype=torch.float64)
    ours = torch.stack([top, left, h, w], 1).double()
    assert torch.allclose(ours.mean(0), ref.mean(0), rtol=0.03)
    assert torch.allclose((ours[:, 2] * ours[:, 3]).mean(), (ref[:, 2] * ref[:, 3]).mean(), rtol=0.03)
    assert abs(torch.log(ours[:, 3] / ours[:, 2]).mean() - torch.log(ref[:, 3] / ref[:, 2]).mean()) < 0.01
    # A tall image: most tries do not fit, the fallback is the central crop of ratio 3/4.
    t2, l2, h2, w2 = resized_crop_boxes(4000, 200, 10, gen(1), scale=(0.9, 1.0))
    fell_back = (h2 == round(10 / 0.75)) & (w2 == 10)
    assert fell_back.any() and (t2[fell_back] == (200 - 13) // 2).all() and (l2[fell_back] == 0).all()


def test_random_resized_crop_in_recipes():
    x = torch.randint(0, 256, (64, 3, 64, 64), dtype=torch.uint8, generator=gen(0))
    rng = torch.random.get_rng_state()
    a = augment(x, "rrc64+flip", gen(3))
    assert torch.equal(a, augment(x, "rrc64+flip", gen(3))) and not torch.equal(a, augment(x, "rrc64+flip", gen(4)))
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert a.shape == x.shape and a.dtype == torch.uint8
    small = augment(x.float(), "rrc32", gen(3))
    assert small.shape == (64, 3, 32, 32) and small.dtype == torch.float32
    # A constant image stays constant whatever the crop.
    const = torch.full((8, 1, 16, 16), 0.25, dtype=torch.float64)
    assert torch.allclose(augment(const, "rrc16", gen(0)), const)
    assert math.isclose(augment(x, "rrc64", gen(5)).float().mean().item(), x.float().mean().item(), rel_tol=0.05)


def test_one_channel_batches_come_back_with_standard_strides():
    """A one-channel batch once came back with channels-last strides, which sends CPU BatchNorm down another
    kernel; every recipe returns a standard-contiguous (N, C, H, W) batch."""
    x = torch.rand(4, 1, 8, 8)
    for recipe in ("shift1", "crop2+flip", "rrc8+flip"):
        out = augment(x, recipe, torch.Generator().manual_seed(0))
        assert out.stride() == torch.empty(out.shape).stride(), recipe
