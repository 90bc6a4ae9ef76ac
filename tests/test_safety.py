"""evaluate, expected calibration error and functional consistency against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from raystudy.safety import (
    disagreement,
    evaluate,
    expected_calibration_error,
    js_divergence,
    pairwise_consistency,
)

# ---------------------------------------------------------------- evaluate


def test_evaluate_classification_sample_weighted_and_eval_mode():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(11, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (11,), generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Dropout(0.5), nn.Linear(6, 4)).double()
    model.train()
    ev = evaluate(model, nn.CrossEntropyLoss(), [(x[:8], y[:8]), (x[8:], y[8:])])
    assert model.training
    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert ev.n == 11
    torch.testing.assert_close(ev.outputs, logits)
    assert torch.equal(ev.targets, y)
    # One big batch = the sample-weighted mean over the two unequal batches.
    assert ev.loss == pytest.approx(float(nn.CrossEntropyLoss()(logits, y)), rel=1e-12)
    correct = sum(int(logits[i].argmax() == y[i]) for i in range(11))
    assert ev.accuracy == pytest.approx(correct / 11)


def test_evaluate_regression_has_no_accuracy():
    x = torch.tensor([[0.0], [1.0], [2.0]])
    y = torch.tensor([[1.0], [1.0], [5.0]])
    model = nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(2.0)
        model.bias.fill_(0.0)
    ev = evaluate(model, nn.MSELoss(), [(x[:2], y[:2]), (x[2:], y[2:])])
    assert ev.accuracy is None
    # predictions 0, 2, 4 -> squared errors 1, 1, 1 -> MSE 1.
    assert ev.loss == pytest.approx(1.0)
    assert ev.outputs.shape == (3, 1)


# ---------------------------------------------------------------- calibration


def test_ece_hand_case():
    # n_bins=5: bins (0,.2], (.2,.4], (.4,.6], (.6,.8], (.8,1].
    # conf .9 right, .9 wrong -> bin 4: acc .5, conf .9 -> 2/4 * .4  = .2
    # conf .7 right           -> bin 3: acc 1, conf .7  -> 1/4 * .3  = .075
    # conf .55 wrong          -> bin 2: acc 0, conf .55 -> 1/4 * .55 = .1375   total .4125
    probs = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.3, 0.7], [0.55, 0.45]])
    targets = torch.tensor([0, 0, 1, 1])
    assert expected_calibration_error(probs, targets, n_bins=5) == pytest.approx(0.4125)


def test_ece_bins_are_right_closed():
    # n_bins=4 (exact binary edges). conf .75 right sits in (.5, .75], conf .8 wrong in (.75, 1]:
    # .5 * |1 - .75| + .5 * |0 - .8| = .525. (Left-closed bins would pool them: |.5 - .775| = .275.)
    probs = torch.tensor([[0.75, 0.25], [0.8, 0.2]], dtype=torch.float64)
    targets = torch.tensor([0, 1])
    assert expected_calibration_error(probs, targets, n_bins=4) == pytest.approx(0.525)


def test_ece_confidence_one_is_counted():
    # conf 1.0 right and 1.0 wrong -> last bin: acc .5, conf 1 -> 2/3 * .5 = 1/3;
    # conf .7 right -> bin (.6, .8]: 1/3 * .3 = .1.  Total 13/30 (torchmetrics drops the 1.0s).
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.3]])
    targets = torch.tensor([0, 0, 0])
    assert expected_calibration_error(probs, targets, n_bins=5) == pytest.approx(13 / 30)


def test_ece_perfectly_calibrated_is_zero():
    # Exact: confidence c in {.5, .6, ..., 1.0}, 10 samples each, exactly 10c of them right.
    probs, targets = [], []
    for c10 in range(5, 11):
        c = c10 / 10
        for k in range(10):
            probs.append([c, 1 - c])
            targets.append(0 if k < c10 else 1)
    exact = expected_calibration_error(torch.tensor(probs, dtype=torch.float64), torch.tensor(targets))
    assert exact == pytest.approx(0.0, abs=1e-12)
    # Sampled: labels drawn with P(right) = confidence; only sampling noise remains.
    g = torch.Generator().manual_seed(0)
    conf = 0.5 + 0.5 * torch.rand(100_000, generator=g, dtype=torch.float64)
    right = torch.rand(100_000, generator=g, dtype=torch.float64) < conf
    probs = torch.stack([conf, 1 - conf], dim=1)
    assert expected_calibration_error(probs, (~right).long()) < 0.01


def _torchmetrics_style_ece(probs, targets, n_bins):
    """Naive loop with torchmetrics' binning: bin b = [b/n, (b+1)/n), confidence 1.0 dropped."""
    bins = [[] for _ in range(n_bins)]
    for p, t in zip(probs.tolist(), targets.tolist()):
        conf = max(p)
        b = math.floor(conf * n_bins)
        if b < n_bins:
            bins[b].append((conf, float(p.index(conf) == t)))
    total = len(targets)
    ece = 0.0
    for members in bins:
        if members:
            acc = sum(r for _, r in members) / len(members)
            mean_conf = sum(c for c, _ in members) / len(members)
            ece += len(members) / total * abs(acc - mean_conf)
    return ece


def test_ece_matches_torchmetrics_definition_away_from_edges():
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(2.0 * torch.randn(500, 10, generator=g, dtype=torch.float64), dim=1)
    targets = torch.randint(0, 10, (500,), generator=g)
    ours = expected_calibration_error(probs, targets)
    assert ours > 0.05  # a miscalibrated case, so agreement is not 0 == 0
    assert ours == pytest.approx(_torchmetrics_style_ece(probs, targets, 15), rel=1e-12)


def test_ece_rejects_logits():
    with pytest.raises(ValueError):
        expected_calibration_error(torch.tensor([[2.0, -1.0]]), torch.tensor([0]))


# ---------------------------------------------------------------- consistency


def test_disagreement_hand_values():
    a, b = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 0, 0])
    assert disagreement(a, b) == pytest.approx(0.5)
    logits_a = torch.nn.functional.one_hot(a, 4).double() * 3 - 1
    assert disagreement(logits_a, b) == pytest.approx(0.5)  # (N, C) outputs: argmax taken
    assert disagreement(logits_a, logits_a) == 0.0


def test_js_divergence_hand_values():
    # Row 1: disjoint one-hots -> ln 2. Row 2: identical -> 0.
    # Row 3: p = (.5, .5), q = (1, 0), m = (.75, .25): KL(p||m) = .5 ln(4/3), KL(q||m) = ln(4/3),
    # JS = .75 ln(4/3).
    p = torch.tensor([[1.0, 0.0], [0.2, 0.8], [0.5, 0.5]])
    q = torch.tensor([[0.0, 1.0], [0.2, 0.8], [1.0, 0.0]])
    expected = (math.log(2) + 0 + 0.75 * math.log(4 / 3)) / 3
    assert js_divergence(p, q) == pytest.approx(expected, rel=1e-6)
    assert js_divergence(q, p) == pytest.approx(expected, rel=1e-6)


def test_pairwise_consistency_hand_values():
    # Labels: s0 (0, 0), s1 (0, 1), s2 (1, 1); one-hot probabilities.
    # Disagreement: (0,1) .5, (0,2) 1, (1,2) .5 -> 2/3. JS per differing input ln 2 -> pairs
    # ln2/2, ln2, ln2/2 -> 2 ln2 / 3. Mean over the 6 ordered pairs equals the mean over these 3.
    onehot = lambda labels: torch.nn.functional.one_hot(torch.tensor(labels), 2).double()  # noqa: E731
    out = {0: onehot([0, 0]), 1: onehot([0, 1]), 2: onehot([1, 1])}
    res = pairwise_consistency(out, from_logits=False)
    assert res["n_pairs"] == 6
    assert res["disagreement"] == pytest.approx(2 / 3)
    assert res["js_divergence"] == pytest.approx(2 * math.log(2) / 3)


def test_pairwise_consistency_from_logits_and_ten_seeds():
    g = torch.Generator().manual_seed(2)
    probs = {s: torch.softmax(torch.randn(30, 5, generator=g, dtype=torch.float64), dim=1) for s in range(10)}
    res = pairwise_consistency({s: p.log() for s, p in probs.items()})  # softmax(log p) = p
    assert res["n_pairs"] == 90
    ordered = [(i, j) for i in range(10) for j in range(10) if i != j]
    dis = sum(disagreement(probs[i], probs[j]) for i, j in ordered) / 90
    js = sum(js_divergence(probs[i], probs[j]) for i, j in ordered) / 90
    assert res["disagreement"] == pytest.approx(dis, rel=1e-12)
    assert res["js_divergence"] == pytest.approx(js, rel=1e-12)
    with pytest.raises(ValueError):
        pairwise_consistency({0: probs[0]})
