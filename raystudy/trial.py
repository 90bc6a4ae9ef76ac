"""The trial record: one grid point of a study, everything needed to train it and measure its checkpoints.

A plain frozen dataclass (JSON-able through ``to_dict``/``from_dict``) that training, measuring and the Ray
layer import without the study-file parser (``raystudy.study`` builds trials from a validated study). Its id
(``trial_id``) is set by the grid expansion; ``measure_hash`` names the measurement settings of a row.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from raystudy.seeding import derive_seed

# The Trial fields that say what to measure, not how to train: they never enter the trial id, and their hash
# names each result row (a changed setting re-measures, nothing is retrained). The settings of metrics
# registered since live in Trial.metric_settings, hashed only when a block lists such a metric.
MEASUREMENT_FIELDS = ("metrics", "sharpness", "hessian", "corruption", "adaptive", "complexity", "measure")
# A resume point every 10 minutes of training by default (the study file's ``resume_every``).
RESUME_EVERY_DEFAULT = {"epochs": None, "minutes": 10.0}


@dataclass(frozen=True)
class Trial:
    """One grid point: everything needed to train it and measure its checkpoints (JSON-able)."""
    study: str
    block: str
    family: str
    task: str
    model: str
    regime: str
    seed: int
    optimizer: str
    lr: float
    momentum: float
    batch_size: int | None
    weight_decay: float  # effective: 0.0 unless the regime has "wd"
    sam_rho: float | None  # effective: None unless the regime has "sam"
    augment: bool
    factor: float | None
    label_noise: float | None
    schedule: str
    epochs: int
    checkpoints: tuple[int, ...]
    n_train: int | None
    n_test: int | None
    shuffle_seed: int
    data_root: str | None = None
    model_args: dict = field(default_factory=dict)
    metrics: tuple[str, ...] = ()
    sharpness: dict = field(default_factory=dict)
    hessian: dict = field(default_factory=dict)
    corruption: dict = field(default_factory=dict)
    adaptive: dict = field(default_factory=dict)
    complexity: dict = field(default_factory=dict)
    measure: dict = field(default_factory=dict)
    metric_settings: dict = field(default_factory=dict)  # settings key -> settings of the other listed metrics
    resources: dict = field(default_factory=dict)
    resume_every: dict = field(default_factory=lambda: dict(RESUME_EVERY_DEFAULT))
    precision: str = "fp32"
    compile: bool = False
    target_scale: float = 1.0  # functions: targets are target_scale * f; 1 (the protocol's) elsewhere
    trial_id: str = ""

    @property
    def regularisers(self) -> set[str]:
        return set(self.regime.split("+")) - {"base"}

    @property
    def task_params(self) -> dict[str, Any]:
        """Keyword arguments for ``tasks.load_task`` (only those this family takes)."""
        keys = {"functions": ("n_train", "n_test", "target_scale"), "circles": ("factor", "label_noise"),
                "images": ("label_noise", "data_root")}[self.family]
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}

    @property
    def init_seed(self) -> int:
        """Seed of the initial weights: depends only on (task, model, seed), never on the regime,
        so every regime of a seed starts from the same weights (comparisons with base are paired).
        Family A uses the same weights for every target function (protocol)."""
        task = "*" if self.family == "functions" else self.task
        return derive_seed("init", self.family, task, self.model, self.model_args, self.seed)

    @property
    def measure_hash(self) -> str:
        """8 hex digits of every setting that shapes a row but not training (metrics and their settings,
        the measured data): a row measured under other settings is stale and gets re-measured."""
        settings = {k: getattr(self, k) for k in MEASUREMENT_FIELDS}
        if self.metric_settings:  # only when listed, so that registering a metric changes no existing hash
            settings["metric_settings"] = self.metric_settings
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=list).encode()).hexdigest()[:8]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Trial":
        d = dict(d)
        d["checkpoints"], d["metrics"] = tuple(d["checkpoints"]), tuple(d["metrics"])
        return cls(**d)
