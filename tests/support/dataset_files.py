"""Small dataset files in the exact on-disk formats of the real releases, for tests.

Each writer puts a release folder under ``root`` as the real archive extracts it and returns what
it wrote, so a test can compare loaded tensors with the source. Images are learnable: every class
has its own colour (pixel = class colour + small noise), so a nearest-centroid classifier on the
normalised inputs is near-perfect when images and labels line up, and at chance when they do not.

    write_cifar10(root, n_train=200, n_test=100)        -> cifar-10-batches-py/
    write_cifar100(root, n_train=300, n_test=200)       -> cifar-100-python/
    write_tinyimagenet(root, n_train=2, n_val=1)        -> tiny-imagenet-200/   (per class)
    write_cifar10_c(root, labels, images)               -> CIFAR-10-C/  (also write_cifar100_c)
    write_tinyimagenet_c(root, wnids, n_per_class=1, n_classes=10) -> Tiny-ImageNet-C/
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

CIFAR_CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
    "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
    "jpeg_compression", "speckle_noise", "gaussian_blur", "spatter", "saturate",
)
TINY_CORRUPTIONS = CIFAR_CORRUPTIONS[:15]
_LEVELS = np.array([20, 62, 104, 146, 188, 230])


def class_colour(k: int) -> np.ndarray:
    """RGB colour of class k (k < 216): its base-6 digits pick one of six levels per channel."""
    return _LEVELS[[k // 36 % 6, k // 6 % 6, k % 6]]


def class_images(labels: np.ndarray, size: int, rng: np.random.Generator, noise: int = 12) -> np.ndarray:
    """uint8 images (N, size, size, 3) (HWC, as PIL sees them): class colour + uniform noise."""
    base = np.stack([class_colour(int(k)) for k in labels])[:, None, None, :]
    jitter = rng.integers(-noise, noise + 1, size=(len(labels), size, size, 3))
    return np.clip(base + jitter, 0, 255).astype(np.uint8)


def cifar_rows(images_hwc: np.ndarray) -> np.ndarray:
    """The release's row layout, built plane by plane: 1024 red values (row-major), then green,
    then blue. Written independently of the loader's reshape, so the test can catch a mix-up."""
    n = len(images_hwc)
    return np.concatenate([images_hwc[..., c].reshape(n, 1024) for c in range(3)], axis=1)


def _pickle(path: Path, obj: dict, protocol: int = 2) -> None:
    # Keys as bytes: what Python 3 sees of the Python 2 pickles under encoding="bytes".
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def write_cifar10(root: Path, n_train: int = 200, n_test: int = 100, seed: int = 0,
                  protocol: int = 2) -> dict[str, np.ndarray]:
    """``cifar-10-batches-py/`` with ``data_batch_1..5`` (n_train split over five batches),
    ``test_batch`` and ``batches.meta``, pickled with ``protocol`` (the release was pickled by
    Python 2's cPickle). Returns ``x_train, y_train, x_test, y_test`` (images HWC)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    y_tr, y_te = rng.integers(0, 10, n_train), rng.integers(0, 10, n_test)
    x_tr, x_te = class_images(y_tr, 32, rng), class_images(y_te, 32, rng)
    for i, idx in enumerate(np.array_split(np.arange(n_train), 5), start=1):
        _pickle(folder / f"data_batch_{i}", {
            b"batch_label": f"training batch {i} of 5".encode(), b"labels": y_tr[idx].tolist(),
            b"data": cifar_rows(x_tr[idx]), b"filenames": [f"img_{j}.png".encode() for j in idx]}, protocol)
    _pickle(folder / "test_batch", {
        b"batch_label": b"testing batch 1 of 1", b"labels": y_te.tolist(), b"data": cifar_rows(x_te),
        b"filenames": [f"test_{j}.png".encode() for j in range(n_test)]}, protocol)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _pickle(folder / "batches.meta", {b"num_cases_per_batch": 10000, b"label_names": names, b"num_vis": 3072},
            protocol)
    return {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}


def write_cifar100(root: Path, n_train: int = 300, n_test: int = 200, seed: int = 0) -> dict[str, np.ndarray]:
    """``cifar-100-python/`` with ``train``, ``test`` (``fine_labels`` and ``coarse_labels``) and
    ``meta``. Returns ``x_train, y_train, x_test, y_test`` (fine labels, images HWC)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        y = rng.integers(0, 100, n)
        x = class_images(y, 32, rng)
        _pickle(folder / split, {
            b"filenames": [f"{split}_{j}.png".encode() for j in range(n)], b"batch_label": split.encode(),
            b"fine_labels": y.tolist(), b"coarse_labels": (y // 5).tolist(), b"data": cifar_rows(x)})
        out[f"x_{split}"], out[f"y_{split}"] = x, y
    _pickle(folder / "meta", {b"fine_label_names": [f"fine{k}".encode() for k in range(100)],
                              b"coarse_label_names": [f"coarse{k}".encode() for k in range(20)]})
    return out


def _write_c(folder: Path, images_hwc: np.ndarray, labels: np.ndarray, corruptions) -> None:
    """Each ``<c>.npy``: the images at severities 1..5 stacked; severity s adds 8 * s to every
    pixel of channel 0 and writes corruption index + 1 into pixel (0, 0) of channel 1."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "labels.npy", np.tile(labels.astype(np.uint8), 5))
    for ci, c in enumerate(corruptions):
        stack = np.concatenate([images_hwc] * 5).astype(np.int16)
        sev = np.repeat(np.arange(1, 6), len(images_hwc))
        stack[..., 0] += 8 * sev[:, None, None]
        stack[:, 0, 0, 1] = ci + 1
        np.save(folder / f"{c}.npy", np.clip(stack, 0, 255).astype(np.uint8))


def write_cifar10_c(root: Path, images_hwc: np.ndarray, labels: np.ndarray,
                    corruptions=CIFAR_CORRUPTIONS) -> Path:
    """``CIFAR-10-C/`` from test images (N, 32, 32, 3): ``<c>.npy`` (5N, 32, 32, 3) uint8 and
    ``labels.npy`` (5N,) uint8, as the release (N = 10,000 there). See ``_write_c``."""
    _write_c(Path(root) / "CIFAR-10-C", images_hwc, labels, corruptions)
    return Path(root) / "CIFAR-10-C"


def write_cifar100_c(root: Path, images_hwc: np.ndarray, labels: np.ndarray,
                     corruptions=CIFAR_CORRUPTIONS) -> Path:
    """``CIFAR-100-C/``, as ``write_cifar10_c``."""
    _write_c(Path(root) / "CIFAR-100-C", images_hwc, labels, corruptions)
    return Path(root) / "CIFAR-100-C"


def tiny_wnids() -> list[str]:
    """200 made-up wnids, deliberately *not* in sorted order in ``wnids.txt`` (the real file is not
    sorted either), so the loader's sorted class index is exercised."""
    return [f"n{(k * 7919) % 100000:08d}" for k in range(200)]


def _jpeg(path: Path, hwc: np.ndarray, grey: bool = False) -> None:
    from PIL import Image

    img = Image.fromarray(hwc)
    (img.convert("L") if grey else img).save(path, format="JPEG", quality=95)


def write_tinyimagenet(root: Path, n_train: int = 2, n_val: int = 1, seed: int = 0,
                       grey_classes: tuple[int, ...] = (3,)) -> dict:
    """``tiny-imagenet-200/`` with all 200 classes, ``n_train`` training and ``n_val`` validation
    JPEGs per class (500 / 50 in the release), ``words.txt``, ``*_boxes.txt``,
    ``val_annotations.txt`` (classes shuffled) and two test images. Training images of
    ``grey_classes`` are saved greyscale. Validation image 0 is a marker: red top-left quadrant,
    blue bottom-right, black elsewhere. Returns ``wnids`` (file order), ``sorted_wnids``,
    ``val_labels`` (sorted-wnid indices, annotation order) and ``val_images`` (HWC)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "tiny-imagenet-200"
    wnids = tiny_wnids()
    index = {w: k for k, w in enumerate(sorted(wnids))}
    (folder / "val" / "images").mkdir(parents=True, exist_ok=True)
    (folder / "test" / "images").mkdir(parents=True, exist_ok=True)
    (folder / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    (folder / "words.txt").write_text("".join(f"{w}\tthing {k}, object {k}\n" for k, w in enumerate(wnids)))
    for w in wnids:
        d = folder / "train" / w / "images"
        d.mkdir(parents=True, exist_ok=True)
        imgs = class_images(np.full(n_train, index[w]), 64, rng)
        for i, img in enumerate(imgs):
            _jpeg(d / f"{w}_{i}.JPEG", img, grey=index[w] in grey_classes)
        (folder / "train" / w / f"{w}_boxes.txt").write_text(
            "".join(f"{w}_{i}.JPEG\t0\t0\t63\t63\n" for i in range(n_train)))
    val_wnids = list(np.array(wnids * n_val)[rng.permutation(200 * n_val)])
    val_labels = np.array([index[w] for w in val_wnids])
    val_images = class_images(val_labels, 64, rng)
    val_images[0] = 0
    val_images[0, :32, :32, 0] = 255
    val_images[0, 32:, 32:, 2] = 255
    lines = []
    for i, (w, img) in enumerate(zip(val_wnids, val_images)):
        _jpeg(folder / "val" / "images" / f"val_{i}.JPEG", img)
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63\n")
    (folder / "val" / "val_annotations.txt").write_text("".join(lines))
    for i in range(2):
        _jpeg(folder / "test" / "images" / f"test_{i}.JPEG", class_images(np.array([i]), 64, rng)[0])
    return {"wnids": wnids, "sorted_wnids": sorted(wnids), "val_labels": val_labels, "val_images": val_images}


def write_tinyimagenet_c(root: Path, wnids: list[str], n_per_class: int = 1, n_classes: int = 10,
                         corruptions=TINY_CORRUPTIONS, seed: int = 0) -> Path:
    """``Tiny-ImageNet-C/<c>/<s>/<wnid>/*.JPEG`` for the first ``n_classes`` of the sorted
    ``wnids`` (the release has all 200 x 50): class-colour images whose red channel is raised by
    8 * severity. File names as in the release's ImageNet style."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "Tiny-ImageNet-C"
    for c in corruptions:
        for s in range(1, 6):
            for k, w in enumerate(sorted(wnids)[:n_classes]):
                d = folder / c / str(s) / w
                d.mkdir(parents=True, exist_ok=True)
                imgs = class_images(np.full(n_per_class, k), 64, rng).astype(np.int16)
                imgs[..., 0] += 8 * s
                for i, img in enumerate(np.clip(imgs, 0, 255).astype(np.uint8)):
                    _jpeg(d / f"{w}_{i}.JPEG", img)
    return folder
