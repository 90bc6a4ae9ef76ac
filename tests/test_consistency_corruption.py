"""Corruption accuracy per (corruption, severity) and functional consistency across seeds, against hand values."""
import itertools

import numpy as np
import polars as pl
import pytest
import torch
from torch import nn

from raystudy.analysis.consistency import add_consistency
from raystudy.analysis.consistency import read_predictions
from raystudy.measure.safety import corruption_columns, write_predictions
from raystudy.storage import Store
from raystudy.tasks.base import CorruptionSet, Task


class PixelVote(nn.Module):
    """Predicts the class whose channel is brightest at pixel (0, 0): accuracy is known by construction."""
    def forward(self, x):
        return x[:, :, 0, 0] * 10.0


def _images(labels: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, 2, 2) with channel y lit at (0, 0), or channel (y + 1) % 3 where flip is set."""
    x = torch.zeros(len(labels), 3, 2, 2, dtype=torch.uint8)
    lit = torch.where(flip, (labels + 1) % 3, labels)
    x[torch.arange(len(labels)), lit, 0, 0] = 255
    return x


def test_corruption_accuracy_per_set_and_mean():
    y = torch.arange(40) % 3
    wrong = {("noise", 1): 0, ("noise", 2): 10, ("blur", 1): 20, ("blur", 2): 40}  # images misclassified

    def load(corruption, severity, max_samples):
        flip = torch.arange(40) < wrong[(corruption, severity)]
        n = max_samples or 40
        return _images(y, flip)[:n], y[:n]

    task = Task(name="t", family="images", kind="classification", x_train=_images(y, y < 0), y_train=y,
                x_test=_images(y, y < 0), y_test=y, in_shape=(3, 2, 2), out_dim=3, mean=(0, 0, 0), std=(1, 1, 1),
                corruptions=CorruptionSet("T-C", tuple(wrong), load))
    on = lambda x, y, size=None: [(task.normalise(x), y)]  # noqa: E731
    out = corruption_columns(task, PixelVote(), nn.CrossEntropyLoss(), on)
    accs = {(b["corruption"], b["severity"]): b["acc"] for b in out["corruption_acc_by"]}
    assert accs == {k: 1 - v / 40 for k, v in wrong.items()}
    assert out["corruption_acc"] == pytest.approx(np.mean([1, 0.75, 0.5, 0.0]))
    assert {b["n"] for b in out["corruption_acc_by"]} == {40}
    few = corruption_columns(task, PixelVote(), nn.CrossEntropyLoss(), on, max_samples=20)  # first 20 of each
    assert {(b["corruption"], b["severity"]): b["acc"] for b in few["corruption_acc_by"]}[("noise", 2)] == 0.5


def test_predictions_round_trip(tmp_path):
    store = Store(str(tmp_path))
    logits = torch.randn(50, 7, generator=torch.Generator().manual_seed(0)) * 3
    rel = write_predictions(store, "trial-a", 3, logits)
    assert rel == "results/trial-a/epoch_000003.predictions.npz" and (tmp_path / rel).is_file()
    pred, probs = read_predictions(store, rel)
    assert np.array_equal(pred, logits.argmax(1).numpy())
    np.testing.assert_allclose(probs, torch.softmax(logits.double(), 1).numpy(), atol=1e-3)
    np.testing.assert_allclose(probs.sum(1), 1.0)


def test_consistency_averages_each_seed_over_its_partners():
    rng = np.random.default_rng(0)
    n, c, seeds = 30, 4, (0, 1, 2, 5)
    stored, rows = {}, []
    for regime, seed in itertools.product(("base", "sam"), seeds):
        probs = rng.dirichlet(np.ones(c), size=n)
        path = f"results/{regime}-{seed}/epoch_000002.predictions.npz"
        stored[path] = (probs.argmax(1), probs)
        rows.append(dict(block="b", task="t", model="m", regime=regime, seed=seed, trial_id=f"{regime}-{seed}",
                         epoch=2, lr=0.1, predictions=path))
    rows.append(dict(block="b", task="t", model="m", regime="wd", seed=0, trial_id="wd-0", epoch=2, lr=0.1,
                     predictions="results/wd-0/epoch_000002.predictions.npz"))  # no partner: stays null
    stored["results/wd-0/epoch_000002.predictions.npz"] = stored["results/base-0/epoch_000002.predictions.npz"]
    out = add_consistency(pl.DataFrame(rows), stored.__getitem__)

    def js(p, q):
        m = (p + q) / 2
        kl = lambda a: np.sum(np.where(a > 0, a * np.log(a / m), 0.0), axis=1)  # noqa: E731
        return float(np.mean(kl(p) / 2 + kl(q) / 2))

    for regime, seed in itertools.product(("base", "sam"), seeds):
        me = stored[f"results/{regime}-{seed}/epoch_000002.predictions.npz"]
        partners = [stored[f"results/{regime}-{s}/epoch_000002.predictions.npz"] for s in seeds if s != seed]
        row = out.filter(pl.col("trial_id") == f"{regime}-{seed}").row(0, named=True)
        assert row["disagreement"] == pytest.approx(np.mean([np.mean(me[0] != p[0]) for p in partners]))
        assert row["jsd"] == pytest.approx(np.mean([js(me[1], p[1]) for p in partners]))
    assert out.filter(pl.col("trial_id") == "wd-0")["disagreement"].to_list() == [None]
    # Every ordered pair counted once per direction: the mean over rows is the mean over the 12 ordered pairs.
    base = out.filter(pl.col("regime") == "base")
    pairs = [np.mean(stored[f"results/base-{a}/epoch_000002.predictions.npz"][0]
                     != stored[f"results/base-{b}/epoch_000002.predictions.npz"][0])
             for a, b in itertools.permutations(seeds, 2)]
    assert len(pairs) == 12 and base["disagreement"].mean() == pytest.approx(np.mean(pairs))
