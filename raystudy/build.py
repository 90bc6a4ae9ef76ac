"""What a trial learns, built the same way for training and for measuring: its task, its model with its
initial weights, and its loss. Neutral ground between the stages: ``train`` and ``measure`` both import it,
neither imports the other. Plain torch, no Ray."""
from __future__ import annotations

import torch
from torch import nn

from raystudy import models, tasks
from raystudy.tasks.base import Task
from raystudy.trial import Trial


def load_trial_task(trial: Trial) -> Task:
    """The trial's task (data split, labels as trained: noisy where the trial says so). Cost: see
    ``tasks.load_task`` (files are read; toy tasks are generated)."""
    return tasks.load_task(trial.family, trial.task, seed=trial.seed, **trial.task_params)


def build_model(trial: Trial, task: Task) -> nn.Module:
    """The trial's model with its initial weights, which depend only on (task, model, seed); the caller's
    global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(trial.init_seed)
        return models.create_model(trial.model, in_shape=task.in_shape, out_dim=task.out_dim, **trial.model_args)


def loss_fn_for(task: Task) -> nn.Module:
    """Mean-reduced loss of the task: MSE for regression, cross-entropy for classification."""
    return nn.MSELoss() if task.kind == "regression" else nn.CrossEntropyLoss()
