"""digits-c: the in-memory corruption set of the 8x8 digits: deterministic, well-formed, graded by severity,
and recorded by name and version in the row."""
import numpy as np
import pytest
import torch
from torch import nn

from raystudy.measure.safety import corruption_columns
from raystudy.tasks import check_available, load_task
from raystudy.tasks.digits_c import CORRUPTIONS, DIGITS_C_VERSION, NAME, SEVERITY, corrupt

NOISE = ("gaussian_noise", "shot_noise", "impulse_noise")
# Parameters that fall as severity rises (a milder setting has more counts, contrast, cells or quality).
FALLING = {"shot_noise", "contrast", "pixelate", "jpeg_compression"}


@pytest.fixture(scope="module")
def digits():
    return load_task("images", "digits", seed=0)


def test_named_with_its_version_and_lists_every_corruption_and_severity(digits):
    sets = digits.corruptions
    assert NAME == sets.name == f"digits-c-v{DIGITS_C_VERSION}" == "digits-c-v1"
    assert len(CORRUPTIONS) >= 9 and sets.items == tuple((c, s) for c in CORRUPTIONS for s in range(1, 6))
    assert check_available("digits", corruptions=True) is None  # generated: no files to look for


def test_identical_on_every_load_and_global_rng_untouched(digits):
    torch_rng, np_rng = torch.random.get_rng_state(), np.random.get_state()
    other = load_task("images", "digits", seed=7).corruptions
    for c in CORRUPTIONS:
        for s in (1, 5):
            (a, ya), (b, yb) = digits.corruptions.load(c, s, None), other.load(c, s, None)
            assert torch.equal(a, b) and torch.equal(ya, yb)
            assert a.numpy().tobytes() == b.numpy().tobytes()
    assert torch.equal(torch.random.get_rng_state(), torch_rng)
    new_np = np.random.get_state()
    assert new_np[0] == np_rng[0] and np.array_equal(new_np[1], np_rng[1]) and new_np[2:] == np_rng[2:]


def test_shape_dtype_range_labels_and_prefix(digits):
    for c, s in digits.corruptions.items:
        x, y = digits.corruptions.load(c, s, None)
        assert x.shape == digits.x_test.shape == (450, 1, 8, 8) and x.dtype == torch.float32
        assert 0.0 <= x.min() and x.max() <= 1.0 and torch.isfinite(x).all()
        assert torch.equal(y, digits.y_test) and y.dtype == torch.int64
        assert not torch.equal(x, digits.x_test), f"{c} {s} changed nothing"
    head, y_head = digits.corruptions.load("gaussian_noise", 3, 40)
    full, _ = digits.corruptions.load("gaussian_noise", 3, None)
    assert torch.equal(head, full[:40]) and torch.equal(y_head, digits.y_test[:40])
    with pytest.raises(KeyError, match="gaussian_noise"):
        digits.corruptions.load("fog", 1, None)
    with pytest.raises(ValueError, match="1..5"):
        digits.corruptions.load("contrast", 6, None)


def test_severity_table_and_change_from_clean_are_monotone(digits):
    clean = digits.x_test[:, 0].double().numpy()
    for c, params in SEVERITY.items():
        steps = np.diff(params)
        assert (steps < 0).all() if c in FALLING else (steps > 0).all(), c
        change = [np.abs(corrupt(clean, c, s) - clean).mean() for s in range(1, 6)]
        assert all(a < b for a, b in zip(change, change[1:])), (c, change)


def test_contrast_matches_its_formula_by_hand(digits):
    clean = digits.x_test[:, 0].numpy().astype(np.float64)
    for s in range(1, 6):
        c_s = SEVERITY["contrast"][s - 1]
        mean = clean.reshape(len(clean), -1).mean(axis=1)[:, None, None]
        expected = np.clip((clean - mean) * c_s + mean, 0.0, 1.0).astype(np.float32)
        got = digits.corruptions.load("contrast", s, None)[0][:, 0].numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-7)
    assert SEVERITY["contrast"][0] == 0.6  # a change of table changes the set: bump DIGITS_C_VERSION with it


def test_a_fixed_classifier_loses_accuracy_as_noise_rises(digits):
    """Nearest class mean of the training images (~90% clean): accuracy never rises from one severity to the
    next and ends at least 10 points below clean (severity 1 may tie or beat clean: mild noise can help it)."""
    x_tr, y_tr = digits.x_train[:, 0].double().numpy(), digits.y_train.numpy()
    means = np.stack([x_tr[y_tr == k].mean(axis=0) for k in range(10)])

    def accuracy(x):
        d = ((x.double().numpy()[:, 0, None] - means[None]) ** 2).sum(axis=(2, 3))
        return float((d.argmin(axis=1) == digits.y_test.numpy()).mean())

    clean = accuracy(digits.x_test)
    assert clean > 0.85
    for c in NOISE:
        accs = [accuracy(digits.corruptions.load(c, s, None)[0]) for s in range(1, 6)]
        assert all(a >= b for a, b in zip(accs, accs[1:])), (c, accs)
        assert accs[-1] < clean - 0.1, (c, accs)


def test_row_records_the_set_and_every_item(digits):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    on = lambda x, y, size=None: [(digits.normalise(x), y)]  # noqa: E731
    out = corruption_columns(digits, model, nn.CrossEntropyLoss(), on, max_samples=100)
    assert out["corruption_set"] == "digits-c-v1"
    assert len(out["corruption_acc_by"]) == 5 * len(CORRUPTIONS)
    assert {b["n"] for b in out["corruption_acc_by"]} == {100}
    assert out["corruption_acc"] == pytest.approx(np.mean([b["acc"] for b in out["corruption_acc_by"]]))
