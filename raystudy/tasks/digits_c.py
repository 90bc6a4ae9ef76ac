"""digits-c: a corruption set for the 8x8 digits, generated in memory from the test split.

In the spirit of CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019), adapted to 8x8 grey images in
[0, 1] (pixel / 16): 11 corruptions x severities 1..5, each the 450 test images in test order with
their labels. Nothing is downloaded or written. ``SEVERITY`` holds every parameter; severity grows
with each row read left to right (the parameter itself rises or falls, as its comment says).

Determinism: all arithmetic is float64 numpy/scipy, and every random draw comes from a private
``numpy.random.Generator`` (PCG64) seeded by ``derive_seed("digits-c", DIGITS_C_VERSION, corruption,
severity)``, never the global RNG: the set is the same on every machine and every call. Changing
any table entry or formula must bump ``DIGITS_C_VERSION``, which names the set (``digits-c-v1``) in
every result row (column ``corruption_set``).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import fft, ndimage

from .base import CorruptionSet
from .corruptions import SEVERITIES
from raystudy.seeding import derive_seed

DIGITS_C_VERSION = 1
NAME = f"digits-c-v{DIGITS_C_VERSION}"

# Per corruption, the parameter at severities 1..5. Units: intensity is [0, 1], lengths are pixels.
SEVERITY: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.1, 0.2, 0.3, 0.4, 0.5),          # noise std (rises)
    "shot_noise": (20, 10, 6, 3, 1.5),                    # Poisson counts at intensity 1 (falls)
    "impulse_noise": (0.03, 0.06, 0.10, 0.17, 0.27),      # fraction of pixels set to 0 or 1 (rises)
    "gaussian_blur": (0.4, 0.6, 0.8, 1.0, 1.2),           # kernel std, zero padding (rises)
    "contrast": (0.6, 0.45, 0.35, 0.25, 0.15),            # c in (x - mean) * c + mean, per-image mean (falls)
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),              # added to every pixel (rises)
    "pixelate": (7, 6, 5, 4, 3),                          # side of the grid, box-resized down and back (falls)
    "jpeg_compression": (15, 8, 5, 3, 1),                 # IJG quality of the image's one 8x8 block (falls)
    "translate": (0.2, 0.4, 0.6, 0.8, 1.0),               # shift, random direction per image (rises)
    "rotate": (5, 10, 15, 20, 30),                        # degrees about the centre, random sign (rises)
    "elastic_transform": (0.2, 0.3, 0.4, 0.5, 0.7),       # RMS displacement, field smoothed by std 1 (rises)
}
CORRUPTIONS: tuple[str, ...] = tuple(SEVERITY)

# JPEG's standard luminance quantisation table (ITU-T T.81, Annex K.1), scaled by quality as libjpeg does.
_JPEG_LUMA = np.array([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55], [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62], [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], dtype=np.float64)


def corrupt(x: np.ndarray, corruption: str, severity: int) -> np.ndarray:
    """Corrupt float images ``x`` ``(N, 8, 8)`` in [0, 1]: float64 ``(N, 8, 8)`` clipped to [0, 1].

    Deterministic in (version, corruption, severity, x). Cost: O(N * 64) numpy work, a few ms for
    the 450 test images. ``KeyError``/``ValueError`` for an unknown corruption or severity."""
    if corruption not in SEVERITY:
        raise KeyError(f"unknown corruption {corruption!r}; known: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of 1..5, got {severity}")
    p = SEVERITY[corruption][severity - 1]
    rng = np.random.default_rng(derive_seed("digits-c", DIGITS_C_VERSION, corruption, severity))
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if corruption == "gaussian_noise":
        out = x + rng.normal(0.0, p, x.shape)
    elif corruption == "shot_noise":
        out = rng.poisson(x * p) / p
    elif corruption == "impulse_noise":
        hit, salt = rng.random(x.shape) < p, rng.random(x.shape) < 0.5  # both drawn always: fixed stream
        out = np.where(hit, salt.astype(np.float64), x)
    elif corruption == "gaussian_blur":
        out = ndimage.gaussian_filter(x, sigma=(0, p, p), mode="constant", cval=0.0)
    elif corruption == "contrast":
        mean = x.mean(axis=(1, 2), keepdims=True)
        out = (x - mean) * p + mean
    elif corruption == "brightness":
        out = x + p
    elif corruption == "pixelate":
        m = _pixelate_matrix(int(p))
        out = m @ x @ m.T
    elif corruption == "jpeg_compression":
        q = _jpeg_table(int(p))
        coef = fft.dctn(x * 255.0 - 128.0, axes=(1, 2), norm="ortho")  # JPEG's DCT of one 8x8 block
        out = (fft.idctn(np.round(coef / q) * q, axes=(1, 2), norm="ortho") + 128.0) / 255.0
    elif corruption == "translate":
        angle = rng.uniform(0.0, 2 * np.pi, n)
        shift = p * np.stack([np.sin(angle), np.cos(angle)], axis=1)[:, :, None, None]
        out = _warp(x, -np.broadcast_to(shift, (n, 2, 8, 8)))
    elif corruption == "rotate":
        theta = np.deg2rad(p) * (2 * rng.integers(0, 2, n) - 1)
        out = _warp(x, _rotation_field(theta))
    else:  # elastic_transform
        field = ndimage.gaussian_filter(rng.uniform(-1.0, 1.0, (n, 2, 8, 8)), sigma=(0, 0, 1, 1))
        field /= np.sqrt((field**2).sum(axis=1).mean(axis=(1, 2)))[:, None, None, None]  # RMS length 1
        out = _warp(x, p * field)
    return np.clip(out, 0.0, 1.0)


def digits_c(x_test: torch.Tensor, y_test: torch.Tensor) -> CorruptionSet:
    """digits-c as a ``CorruptionSet`` named ``NAME``: items are every corruption x severity.

    ``load(c, s, max_samples)`` corrupts the test images ``x_test`` (float32 ``(N, 1, 8, 8)`` in
    [0, 1]) on demand and returns float32 ``(k, 1, 8, 8)`` and the int64 test labels, the first
    ``k = min(max_samples, N)`` (None = all); the first k are the same whatever k (noise is drawn
    for all N). Nothing is cached: a set costs a few ms to make."""
    images = x_test[:, 0].double().numpy()
    labels = y_test.to(torch.int64)

    def load(corruption: str, severity: int, max_samples: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        k = len(labels) if max_samples is None else min(max_samples, len(labels))
        out = corrupt(images, corruption, severity)[:k, None].astype(np.float32)
        return torch.from_numpy(out), labels[:k].clone()

    return CorruptionSet(name=NAME, items=tuple((c, s) for c in CORRUPTIONS for s in SEVERITIES), load=load)


def _warp(x: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """Bilinear resampling of ``x`` (N, H, W) at (row, col) + ``displacement`` (N, 2, H, W), in pixels;
    zero outside the image (the digits' background)."""
    n, h, w = x.shape
    idx, rows, cols = np.meshgrid(np.arange(n), np.arange(h), np.arange(w), indexing="ij")
    coords = np.stack([idx, rows + displacement[:, 0], cols + displacement[:, 1]]).astype(np.float64)
    return ndimage.map_coordinates(x, coords, order=1, mode="constant", cval=0.0)


def _rotation_field(theta: np.ndarray, side: int = 8) -> np.ndarray:
    """Displacement (N, 2, side, side) that samples each output pixel from its source under a rotation
    by ``theta`` (radians, one per image) about the image centre."""
    c = (side - 1) / 2
    r, q = np.meshgrid(np.arange(side) - c, np.arange(side) - c, indexing="ij")
    cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    src_r, src_q = cos * r - sin * q, sin * r + cos * q
    return np.stack([src_r - r, src_q - q], axis=1)


def _pixelate_matrix(k: int, side: int = 8) -> np.ndarray:
    """``side x side`` matrix M with M x M^T = x box-resized to k x k and back (area-weighted both ways, as
    PIL's BOX filter that Hendrycks' pixelate uses); k = side is the identity."""
    return _area_matrix(side, k) @ _area_matrix(k, side)


def _area_matrix(n_out: int, n_in: int) -> np.ndarray:
    """``(n_out, n_in)`` area resampling: output cell i covers input span [i, i + 1) * n_in / n_out, and
    averages the input cells it overlaps, weighted by overlap (rows sum to 1)."""
    width = n_in / n_out
    lo = np.arange(n_out)[:, None] * width
    j = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(lo + width, j + 1) - np.maximum(lo, j), 0.0, None)
    return overlap / width


def _jpeg_table(quality: int) -> np.ndarray:
    """The luminance quantisation table at IJG ``quality`` (1..100), as libjpeg's jpeg_quality_scaling."""
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return np.clip(np.floor((_JPEG_LUMA * scale + 50) / 100), 1, 255)
