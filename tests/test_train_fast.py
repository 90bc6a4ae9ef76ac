"""The fast training loop: same numbers as a plain loop (bit for bit on the CPU), bf16 and
torch.compile recorded, no host sync inside an epoch, and the data-on-device decision.
The GPU-only checks are in test_train_cuda.py."""
from __future__ import annotations

import copy
import functools
import shutil
import warnings
from dataclasses import replace

import pytest
import torch
from torch import nn

from raystudy.checkpoints import list_checkpoints, load_checkpoint
from raystudy.seeding import derive_seed
from raystudy.study import expand, load_study
from raystudy.storage import Store
from raystudy.train.augment import augment
from raystudy.train.epoch import BatchSchedule, TrainingData, TrainStep, fits_on_device, train_epoch
from raystudy.train.loop import build_model, load_trial_task, memory_share, train_trial
from raystudy.train.sam import SAM, bn_stats_frozen
from support.studies import digits_block, function_block, write_study_yaml
from support.synthetic_images import small_cnn, uint8_task

@pytest.fixture
def trials(tmp_path):
    return expand(load_study(write_study_yaml(tmp_path, "fast", digits_block(regime=["base", "aug+sam"]),
                                              function_block())))


# ------------------------------------------------------------- the plain loop, written out by hand


def textbook_sam_step(model, opt, closure, rho):
    """SAM as written before the fused kernels: per-parameter norms, add, copy back."""
    opt.zero_grad(set_to_none=True)
    loss = closure()
    loss.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    with torch.no_grad():
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        scale = rho / (norm + 1e-12)
        originals = [p.detach().clone() for p in params]
        for p in params:
            p.add_(p.grad * scale)
    opt.zero_grad(set_to_none=True)
    with bn_stats_frozen(model):
        closure().backward()
    with torch.no_grad():
        for p, w in zip(params, originals):
            p.copy_(w)
    opt.step()
    return loss.detach()


def plain_epochs(model, opt, task, epochs, batch_size, seed, recipe, sam_rho=None):
    """Host data, task.normalise per batch, float(loss) per step: the loop as first written."""
    loss_fn = nn.MSELoss() if task.kind == "regression" else nn.CrossEntropyLoss()
    n = len(task.x_train)
    for epoch in range(1, epochs + 1):
        model.train()
        if batch_size is None or batch_size >= n:
            order = torch.arange(n)
        else:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed("order", seed, epoch)))
        gen = torch.Generator().manual_seed(derive_seed("augment", seed, epoch))
        total, seen = 0.0, 0
        for start in range(0, n, batch_size or n):
            idx = order[start:start + (batch_size or n)]
            x, y = task.x_train[idx], task.y_train[idx]
            if recipe:
                x = augment(x, recipe, gen)
            x = task.normalise(x)
            closure = functools.partial(lambda x, y: loss_fn(model(x), y), x, y)
            if sam_rho is not None:
                loss = textbook_sam_step(model, opt, closure, sam_rho)
            else:
                opt.zero_grad(set_to_none=True)
                loss = closure()
                loss.backward()
                opt.step()
            total += float(loss.detach()) * len(x)
            seen += len(x)
    return total / seen


@pytest.mark.parametrize("regime", ["base", "aug+sam", "fn"])
def test_train_trial_matches_the_plain_loop_bit_for_bit(tmp_path, trials, regime):
    # On the CPU in fp32 the fast loop does the same arithmetic in the same order (the loss sum is
    # float64, like a Python float), so weights and running loss are equal, not merely close.
    trial = next(t for t in trials if (t.block, t.regime) == {"fn": ("fn", "base")}.get(regime, ("digits", regime)))
    store = Store(str(tmp_path / "s"))
    train_trial(trial, store)
    state = load_checkpoint(store, list_checkpoints(store, trial.trial_id)[-1].path)
    task = load_trial_task(trial)
    model = build_model(trial, task)
    opt = (torch.optim.Adam(model.parameters(), lr=trial.lr, weight_decay=trial.weight_decay)
           if trial.optimizer == "adam" else
           torch.optim.SGD(model.parameters(), lr=trial.lr, momentum=trial.momentum, weight_decay=trial.weight_decay))
    running = plain_epochs(model, opt, task, trial.epochs, trial.batch_size, trial.seed,
                           task.augment_recipe if trial.augment else None, trial.sam_rho)
    assert state["train_loss_running"] == running
    assert all(torch.equal(v, state["model"][k]) for k, v in model.state_dict().items())
    assert state["precision"] == "fp32" and state["compiled"] is False and state["channels_last"] is False
    assert state["data_on_device"] is True  # the CPU: the split is where it is used


@pytest.mark.parametrize("sam_rho", [None, 0.1])
def test_uint8_images_with_statistics_match_the_plain_loop_bit_for_bit(sam_rho):
    task, schedule = uint8_task(), BatchSchedule(32, shuffle_seed=3, augment_seed=3, recipe="crop2+flip")
    fast, plain = small_cnn(), small_cnn()
    opt_f, opt_p = (torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (fast, plain))
    sam = SAM(fast, opt_f, rho=sam_rho) if sam_rho else None
    step, data = TrainStep(fast, opt_f, nn.CrossEntropyLoss(), sam=sam), TrainingData(task, "cpu")
    losses = [train_epoch(step, data.batches(schedule, e)) for e in (1, 2)]
    assert losses[-1] == plain_epochs(plain, opt_p, task, 2, 32, 3, "crop2+flip", sam_rho)
    assert all(torch.equal(a, b) for a, b in zip(fast.state_dict().values(), plain.state_dict().values()))


def test_normalise_equals_the_tasks_own_bit_for_bit():
    task = uint8_task()
    x = task.x_train[:5]
    assert torch.equal(TrainingData(task, "cpu").normalise(x), task.normalise(x))
    plain = replace(task, x_train=task.x_train.float() / 255, mean=None, std=None)
    assert torch.equal(TrainingData(plain, "cpu").normalise(plain.x_train), plain.x_train)


# ------------------------------------------------------------- precision and compile


def conv_output_dtype(step: TrainStep, x, y) -> torch.dtype:
    seen = []
    handle = step.model[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    step(x, y)
    handle.remove()
    return seen[0]


def test_bf16_autocasts_the_forward_and_is_recorded(tmp_path, trials):
    model = small_cnn()
    x, y = uint8_task().x_train[:16].float(), uint8_task().y_train[:16]
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), precision="bf16")
    assert conv_output_dtype(step, x, y) == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay fp32
    other = small_cnn()
    fp32 = TrainStep(other, torch.optim.SGD(other.parameters(), lr=0.1), nn.CrossEntropyLoss())
    assert conv_output_dtype(fp32, x, y) == torch.float32
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, got 'fp16'"):
        TrainStep(model, step.optimizer, nn.CrossEntropyLoss(), precision="fp16")

    trial = replace(next(t for t in trials if t.regime == "aug+sam"), precision="bf16")  # on the CPU: slow but allowed
    store = Store(str(tmp_path / "s"))
    train_trial(trial, store)
    state = load_checkpoint(store, list_checkpoints(store, trial.trial_id)[-1].path)
    assert state["precision"] == "bf16" and state["trial"]["precision"] == "bf16"
    assert 0 < state["train_loss_running"] < 2.5  # it learns (chance level is ln 10 = 2.30 at the start)


def _compile_with(monkeypatch, backend) -> None:
    # The real torch.compile (dynamo tracing, AOT autograd) with a chosen backend: "aot_eager" skips
    # only the C++/Triton code generation, which takes minutes on a small CPU.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=backend))


def test_compile_runs_keeps_state_dict_keys_and_is_recorded(tmp_path, trials, monkeypatch):
    _compile_with(monkeypatch, "aot_eager")
    trial = replace(next(t for t in trials if t.block == "fn"), compile=True)
    store = Store(str(tmp_path / "s"))
    train_trial(trial, store)
    state = load_checkpoint(store, list_checkpoints(store, trial.trial_id)[-1].path)
    eager = build_model(trial, load_trial_task(trial))
    assert state["compiled"] is True and list(state["model"]) == list(eager.state_dict())
    monkeypatch.undo()
    shutil.rmtree(tmp_path / "s")
    train_trial(replace(trial, compile=False), store)
    ref = load_checkpoint(store, list_checkpoints(store, trial.trial_id)[-1].path)
    assert all(torch.allclose(ref["model"][k], v, atol=1e-5) for k, v in state["model"].items())


def test_compile_failure_falls_back_to_eager_without_a_trace(monkeypatch):
    def broken(gm, example_inputs):
        raise RuntimeError("no compiler here")

    _compile_with(monkeypatch, broken)
    task, schedule = uint8_task(), BatchSchedule(40, 1, 1, recipe="crop2+flip")  # 96 = 40 + 40 + 16
    models = [small_cnn(), small_cnn()]
    steps = [TrainStep(m, torch.optim.SGD(m.parameters(), lr=0.1), nn.CrossEntropyLoss(), compile=c)
             for m, c in zip(models, (True, False))]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses = [train_epoch(s, TrainingData(task, "cpu").batches(schedule, 1)) for s in steps]
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == [
        "torch.compile failed, training eagerly instead (RuntimeError: no compiler here)"]
    assert not steps[0].compiled and losses[0] == losses[1]
    # The failed probe left BatchNorm statistics and gradients as an eager run has them: bit-identical.
    assert all(torch.equal(a, b) for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values()))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="inductor needs a C compiler")
def test_compile_with_inductor_on_a_tiny_mlp():
    """The default backend end to end (about a minute of C++ compilation on a 2-core CPU)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    twin = copy.deepcopy(model)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    steps = [TrainStep(m, torch.optim.SGD(m.parameters(), lr=0.1), nn.CrossEntropyLoss(), compile=c)
             for m, c in ((model, True), (twin, False))]
    for _ in range(3):
        losses = [s(x, y) for s in steps]
    assert steps[0].compiled and torch.allclose(losses[0], losses[1], atol=1e-6)
    assert list(model.state_dict()) == list(twin.state_dict())


# ------------------------------------------------------------- no host sync inside an epoch


def test_an_epoch_reads_nothing_back_until_its_end(monkeypatch):
    calls = []

    def counting(name, original):
        def read_back(self, *args, **kwargs):
            calls.append(name)
            return original(self, *args, **kwargs)
        return read_back

    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    task, schedule = uint8_task(), BatchSchedule(16, 0, 0, recipe="crop2+flip")  # 6 steps
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step = TrainStep(model, opt, nn.CrossEntropyLoss(), sam=SAM(model, opt, rho=0.05))
    data = TrainingData(task, "cpu")
    calls.clear()
    train_epoch(step, data.batches(schedule, 1))
    assert calls == ["item"]  # the running loss, once per epoch


# ------------------------------------------------------------- where the training split lives


GIB = 2**30


@pytest.mark.parametrize("data, free, total, share, fits", [
    (1 * GIB, 80 * GIB, 80 * GIB, 1.0, True),
    (20 * GIB, 80 * GIB, 80 * GIB, 1.0, True),     # exactly a quarter of the budget
    (21 * GIB, 80 * GIB, 80 * GIB, 1.0, False),
    (6 * GIB, 80 * GIB, 80 * GIB, 0.25, False),    # a quarter-GPU trial: budget 20 GiB, data <= 5 GiB
    (5 * GIB, 80 * GIB, 80 * GIB, 0.25, True),
    (5 * GIB, 8 * GIB, 80 * GIB, 1.0, False),      # others hold most of the card: free memory rules
    (2 * GIB, 8 * GIB, 80 * GIB, 1.0, True),
    (150 * 2**20, 70 * GIB, 140 * GIB, 0.5, True),  # CIFAR-10 as uint8 on half an H200
])
def test_fits_on_device(data, free, total, share, fits):
    assert fits_on_device(data, free, total, share) is fits


def test_a_trial_uses_its_fractional_gpu_share_or_a_whole_gpu(trials):
    t = trials[0]
    shares = [memory_share(replace(t, resources=t.resources.model_copy(update={"gpus": g}))) for g in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert shares == [1.0, 0.25, 0.5, 1.0, 1.0]


@pytest.mark.parametrize("share", [0.0, -0.5, 1.5])
def test_fits_on_device_rejects_a_share_outside_0_1(share):
    with pytest.raises(ValueError, match="share must be in"):
        fits_on_device(1, 10, 10, share)
