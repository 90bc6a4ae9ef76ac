"""Real image datasets: loaders on files generated in the exact release formats (tests/support/dataset_files),
the -C corruption sets, plan-time checks and one-line errors."""
from __future__ import annotations

import os
import pickle
import time

import numpy as np
import pytest
import torch

from support.dataset_files import (
    CIFAR_CORRUPTIONS, TINY_CORRUPTIONS, class_colour, write_cifar10, write_cifar10_c, write_cifar100,
    write_tinyimagenet, write_tinyimagenet_c,
)
from raystudy.tasks import DatasetError, check_available, describe, load_task, resolve_root
from raystudy.tasks.datasets import DATASETS, ImageDataset


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    c10 = write_cifar10(root, n_train=250, n_test=120)
    write_cifar10_c(root, c10["x_test"], c10["y_test"])
    c100 = write_cifar100(root, n_train=400, n_test=200)
    return root, c10, c100


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    written = write_tinyimagenet(root, n_train=2, n_val=1)
    write_tinyimagenet_c(root, written["wnids"], n_per_class=1, n_classes=10)
    return root, written


def nearest_centroid_accuracy(task, x_eval, y_eval) -> float:
    """Fit class centroids on the normalised training inputs; accuracy on (x_eval, y_eval)."""
    xtr = task.normalise(task.x_train).flatten(1)
    present = torch.unique(task.y_train)
    centroids = torch.stack([xtr[task.y_train == k].mean(0) for k in present])
    pred = present[torch.cdist(task.normalise(x_eval).flatten(1), centroids).argmin(1)]
    return (pred == y_eval).float().mean().item()


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text
    return text


def test_cifar10_layout_labels_and_statistics(cifar_root):
    root, written, _ = cifar_root
    t = load_task("images", "cifar10", seed=3, data_root=str(root))
    assert t.x_train.shape == (250, 3, 32, 32) and t.x_test.shape == (120, 3, 32, 32)
    assert t.x_train.dtype == torch.uint8 and t.y_train.dtype == torch.int64
    # Every pixel where the release put it: images were written plane by plane (R, G, B rows).
    assert np.array_equal(t.x_train.numpy(), written["x_train"].transpose(0, 3, 1, 2))
    assert np.array_equal(t.y_train.numpy(), written["y_train"])
    assert np.array_equal(t.y_test.numpy(), written["y_test"])
    with open(root / "cifar-10-batches-py" / "test_batch", "rb") as f:
        row = pickle.load(f, encoding="bytes")[b"data"][7]
    assert t.x_test[7, 1, 5, 9].item() == row[1024 * 1 + 32 * 5 + 9]  # green plane, row 5, column 9
    assert t.x_test[7, 2, 31, 0].item() == row[2048 + 32 * 31]
    assert (t.in_shape, t.out_dim, t.augment_recipe, t.pad_fill) == ((3, 32, 32), 10, "crop4+flip", 128.0)
    assert t.mean == (125.3, 123.0, 113.9) and t.std == (63.0, 62.1, 66.7)
    assert nearest_centroid_accuracy(t, t.x_test, t.y_test) > 0.97
    # Shuffling the labels must break it: the test can fail.
    shuffled = t.y_test[torch.randperm(len(t.y_test), generator=torch.Generator().manual_seed(0))]
    assert nearest_centroid_accuracy(t, t.x_test, shuffled) < 0.4
    assert torch.equal(load_task("images", "cifar10", seed=99, data_root=str(root)).x_train, t.x_train)
    assert t.info["n_train"] == 250 and t.info["n_labels_changed"] == 0


@pytest.mark.parametrize("protocol", [0, 1, 2, 4, 5])
def test_cifar_pickles_of_every_protocol(tmp_path, protocol):
    """The release was pickled by Python 2 (protocol 2); files a user rewrote in Python 3 load too (4 is 3.11's
    default, 5 its highest, storing arrays as raw buffers)."""
    written = write_cifar10(tmp_path, n_train=15, n_test=5, protocol=protocol)
    check_available("cifar10", str(tmp_path))
    t = load_task("images", "cifar10", seed=0, data_root=str(tmp_path))
    assert np.array_equal(t.x_test.numpy(), written["x_test"].transpose(0, 3, 1, 2))


def test_cifar100_fine_labels(cifar_root):
    root, _, written = cifar_root
    t = load_task("images", "cifar100", seed=0, data_root=str(root))
    assert np.array_equal(t.y_train.numpy(), written["y_train"]) and t.out_dim == 100
    assert np.array_equal(t.x_test.numpy(), written["x_test"].transpose(0, 3, 1, 2))
    assert t.mean == (129.3, 124.1, 112.4) and t.corruptions is None  # no CIFAR-100-C written
    assert nearest_centroid_accuracy(t, t.x_test, t.y_test) > 0.9


def test_label_noise_on_train_labels_only(cifar_root):
    root, written, _ = cifar_root
    clean = load_task("images", "cifar10", seed=0, data_root=str(root))
    noisy = load_task("images", "cifar10", seed=0, data_root=str(root), label_noise=1.0, data_seed=4)
    again = load_task("images", "cifar10", seed=7, data_root=str(root), label_noise=1.0, data_seed=4)
    assert torch.equal(noisy.y_test, clean.y_test) and torch.equal(noisy.y_train, again.y_train)
    assert noisy.info["n_labels_changed"] == int((noisy.y_train != clean.y_train).sum())
    assert 0.8 * 250 < noisy.info["n_labels_changed"] < 0.97 * 250  # ~ 0.9 * 250, Binomial sd 4.7
    with pytest.raises(ValueError):
        load_task("images", "cifar10", seed=0, data_root=str(root), label_noise=1.5)


def test_cifar10_c_severity_slices(cifar_root):
    root, written, _ = cifar_root
    t = load_task("images", "cifar10", seed=0, data_root=str(root))
    cs = t.corruptions
    assert cs.name == "cifar10-c" and len(cs.items) == 95 and cs.items[0] == ("gaussian_noise", 1)
    assert {c for c, _ in cs.items} == set(CIFAR_CORRUPTIONS)
    clean = written["x_test"].transpose(0, 3, 1, 2).astype(int)
    for c, s in (("fog", 3), ("saturate", 5), ("gaussian_noise", 1)):
        x, y = cs.load(c, s, 50)
        assert x.shape == (50, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
        assert torch.equal(y, t.y_test[:50])
        # The writer raised red by 8 * severity and marked pixel (0, 0) of green with the index.
        expect = np.clip(clean[:50, 0] + 8 * s, 0, 255)
        assert np.array_equal(x[:, 0].numpy(), expect)
        assert (x[:, 1, 0, 0] == CIFAR_CORRUPTIONS.index(c) + 1).all()
    x, y = cs.load("snow", 2, None)
    assert len(x) == 120 and nearest_centroid_accuracy(t, x, y) > 0.9
    with pytest.raises(KeyError):
        cs.load("rain", 1, 10)
    with pytest.raises(ValueError):
        cs.load("fog", 6, 10)


def test_tinyimagenet_layout_order_greyscale_and_cache(tiny_root, monkeypatch):
    root, written = tiny_root
    t = load_task("images", "tinyimagenet", seed=0, data_root=str(root))
    assert t.x_train.shape == (400, 3, 64, 64) and t.x_test.shape == (200, 3, 64, 64)
    assert (t.in_shape, t.out_dim, t.augment_recipe) == ((3, 64, 64), 200, "rrc64+flip")
    # Interleaved train order: image 0 of classes 0..199, then image 1 of each.
    assert torch.equal(t.y_train, torch.arange(200).repeat(2))
    assert np.array_equal(t.y_test.numpy(), written["val_labels"])
    # Marker validation image: red top-left quadrant, blue bottom-right (JPEG: tolerances).
    m = t.x_test[0].int()
    assert (m[0, 4:28, 4:28] > 220).all() and (m[1:, 4:28, 4:28] < 35).all()
    assert (m[2, 36:60, 36:60] > 220).all() and (m[:2, 36:60, 36:60] < 35).all()
    # Greyscale JPEGs (class 3) come back as RGB with equal channels.
    grey = t.x_train[t.y_train == 3]
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])
    colour = t.x_train[t.y_train == 10].float().mean((0, 2, 3))
    assert torch.allclose(colour, torch.tensor(class_colour(10), dtype=torch.float32), atol=6)
    assert nearest_centroid_accuracy(t, t.x_test, t.y_test) > 0.97
    # Decoded once, then read from the cache next to the data.
    entries = list((root / ".raystudy" / "decoded").glob("tinyimagenet@*"))
    assert len(entries) == 1
    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr("raystudy.tasks.tinyimagenet.decode_images", no_decoding)
    again = load_task("images", "tinyimagenet", seed=1, data_root=str(root))
    assert torch.equal(again.x_train, t.x_train) and torch.equal(again.x_test, t.x_test)


def test_tinyimagenet_cache_follows_source_changes(tmp_path):
    written = write_tinyimagenet(tmp_path, n_train=1, n_val=1, grey_classes=())
    before = load_task("images", "tinyimagenet", seed=0, data_root=str(tmp_path))
    wnid = written["sorted_wnids"][5]
    path = tmp_path / "tiny-imagenet-200" / "train" / wnid / "images" / f"{wnid}_0.JPEG"
    from PIL import Image
    folder_mtime = path.parent.stat().st_mtime_ns
    time.sleep(0.05)  # past the file system's timestamp granularity
    Image.new("RGB", (64, 64), (255, 255, 255)).save(path.with_suffix(".tmp"), format="JPEG")
    os.replace(path.with_suffix(".tmp"), path)  # replaced, as extraction or rsync would
    assert path.parent.stat().st_mtime_ns != folder_mtime
    after = load_task("images", "tinyimagenet", seed=0, data_root=str(tmp_path))
    assert (after.x_train[5] >= 250).all() and not (before.x_train[5] >= 250).all()
    assert len(list((tmp_path / ".raystudy" / "decoded").glob("tinyimagenet@*"))) == 1  # stale removed


def test_tinyimagenet_c(tiny_root):
    root, written = tiny_root
    t = load_task("images", "tinyimagenet", seed=0, data_root=str(root))
    cs = t.corruptions
    assert cs.name == "tinyimagenet-c" and len(cs.items) == 75
    assert {c for c, _ in cs.items} == set(TINY_CORRUPTIONS)
    x, y = cs.load("contrast", 4, None)
    assert x.shape == (10, 3, 64, 64) and x.dtype == torch.uint8 and torch.equal(y, torch.arange(10))
    red = x[:, 0].float().mean((1, 2))
    expect = torch.tensor([min(255, class_colour(k)[0] + 32) for k in range(10)], dtype=torch.float32)
    assert torch.allclose(red, expect, atol=5)
    xf, yf = cs.load("fog", 1, None)
    keep = yf != 3  # class 3's training images are greyscale, so its centroid is grey
    assert nearest_centroid_accuracy(t, xf[keep], yf[keep]) == 1.0
    x3, y3 = cs.load("contrast", 4, 3)
    assert torch.equal(x3, x[:3]) and torch.equal(y3, y[:3])


def test_check_available_and_describe(cifar_root, tiny_root, tmp_path, monkeypatch):
    assert describe("cifar10") == ((3, 32, 32), 10) and describe("cifar100") == ((3, 32, 32), 100)
    assert describe("tinyimagenet") == ((3, 64, 64), 200) and describe("digits") == ((1, 8, 8), 10)
    root = cifar_root[0]
    assert check_available("cifar10", str(root), corruptions=True) == root / "cifar-10-batches-py"
    assert check_available("tinyimagenet", str(tiny_root[0]), corruptions=True) is not None
    assert check_available("digits", str(tmp_path)) is None
    with pytest.raises(DatasetError) as err:
        check_available("cifar100", str(root), corruptions=True)  # CIFAR-100-C not written
    assert one_line(err.value) == (f"{root / 'CIFAR-100-C'}: missing; run: python -m raystudy.data fetch "
                                   f"cifar100-c --root {root}")
    assert check_available("digits", str(tmp_path), corruptions=True) is None  # digits-c is generated, no files
    monkeypatch.setitem(DATASETS, "plain", ImageDataset("plain", (1, 8, 8), 10, None, None, 10))
    with pytest.raises(ValueError, match="no corruption"):
        check_available("plain", str(tmp_path), corruptions=True)
    with pytest.raises(KeyError, match="tinyimagenet"):
        describe("svhn")


def test_data_root_resolution(cifar_root, monkeypatch, tmp_path):
    monkeypatch.setenv("RAYSTUDY_DATA", str(cifar_root[0]))
    assert load_task("images", "cifar10", seed=0).x_train.shape == (250, 3, 32, 32)
    assert resolve_root("/elsewhere") == resolve_root("/elsewhere/")  # the field wins over the env
    monkeypatch.delenv("RAYSTUDY_DATA")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_root(None) == tmp_path / ".cache" / "raystudy" / "data"
    with pytest.raises(DatasetError) as err:
        load_task("images", "cifar10", seed=0)
    assert "python -m raystudy.data fetch cifar10 --root" in one_line(err.value)


def test_missing_truncated_and_malformed_files_name_the_path(tmp_path):
    write_cifar10(tmp_path, n_train=20, n_test=10)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "data_batch_3").unlink()
    for call in (lambda: check_available("cifar10", str(tmp_path)),
                 lambda: load_task("images", "cifar10", seed=0, data_root=str(tmp_path))):
        with pytest.raises(DatasetError) as err:
            call()
        assert one_line(err.value) == (f"{folder / 'data_batch_3'}: missing; run: python -m raystudy.data "
                                       f"fetch cifar10 --root {tmp_path}")
    write_cifar10(tmp_path, n_train=20, n_test=10)
    blob = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DatasetError, match="test_batch: truncated"):
        check_available("cifar10", str(tmp_path))
    with open(folder / "test_batch", "wb") as f:  # well-framed pickle, wrong row length
        pickle.dump({b"data": np.zeros((10, 3000), np.uint8), b"labels": [0] * 10}, f, protocol=2)
    with pytest.raises(DatasetError, match=r"test_batch: 'data' must be a uint8 array \(N, 3072\)"):
        load_task("images", "cifar10", seed=0, data_root=str(tmp_path))
    with open(folder / "test_batch", "wb") as f:  # a pickle that would run code when loaded
        pickle.dump({b"data": os.getcwd}, f, protocol=2)
    with pytest.raises(DatasetError, match="refusing to load"):
        load_task("images", "cifar10", seed=0, data_root=str(tmp_path))


def test_corruption_and_tiny_files_name_the_path(cifar_root, tmp_path):
    images, labels = np.zeros((4, 32, 32, 3), np.uint8), np.arange(4)
    folder = write_cifar10_c(tmp_path, images, labels)
    write_cifar10(tmp_path, n_train=10, n_test=4)
    blob = (folder / "fog.npy").read_bytes()
    (folder / "fog.npy").write_bytes(blob[:-10])
    with pytest.raises(DatasetError, match=r"fog\.npy: .*(truncated|complete)") as err:
        check_available("cifar10", str(tmp_path), corruptions=True)
    one_line(err.value)
    cs = load_task("images", "cifar10", seed=0, data_root=str(tmp_path)).corruptions
    with pytest.raises(DatasetError, match=r"fog\.npy"):
        cs.load("fog", 1, None)
    (folder / "fog.npy").write_bytes(blob)
    (folder / "saturate.npy").unlink()
    with pytest.raises(DatasetError, match=r"saturate\.npy: missing; run: .* fetch cifar10-c"):
        check_available("cifar10", str(tmp_path), corruptions=True)
    written = write_tinyimagenet(tmp_path, n_train=1, n_val=1, grey_classes=())
    (tmp_path / "tiny-imagenet-200" / "val" / "images" / "val_7.JPEG").unlink()
    with pytest.raises(DatasetError, match=r"val_7\.JPEG: missing"):
        load_task("images", "tinyimagenet", seed=0, data_root=str(tmp_path))
    (tmp_path / "tiny-imagenet-200" / "val" / "images" / "val_7.JPEG").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(DatasetError, match=r"val_7\.JPEG: cannot decode"):
        load_task("images", "tinyimagenet", seed=0, data_root=str(tmp_path))
    (tmp_path / "tiny-imagenet-200" / "wnids.txt").write_text("\n".join(written["wnids"][:199]))
    with pytest.raises(DatasetError, match=r"wnids\.txt: expected 200 distinct wnids, found 199"):
        check_available("tinyimagenet", str(tmp_path))
