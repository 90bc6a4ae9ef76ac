"""The trial record: one grid point of a study, everything needed to train it and measure its checkpoints.

A frozen dataclass that training, measuring and the Ray layer import without the study-file parser
(``raystudy.study`` builds trials from a validated study). Its settings are typed: each metric's own model
from the registry (``trial.sharpness.rhos``), and the measuring, resource and resume settings defined here
(the study schema uses these same models for its block fields). ``to_dict``/``from_dict`` turn it into
plain JSON-able data and back (Ray ships trials as dicts; checkpoints store one). Its id (``trial_id``) is
set by the grid expansion; ``measure_hash`` names the measurement settings of a row.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_type_hints

from pydantic import BaseModel, Field

from raystudy import metrics as registry
from raystudy.metrics import Settings
from raystudy.metrics.adaptive_sharpness import Adaptive
from raystudy.metrics.complexity import Complexity
from raystudy.metrics.corruption import Corruption
from raystudy.metrics.hessian import Hessian
from raystudy.metrics.sam_sharpness import Sharpness
from raystudy.seeding import derive_seed

# The Trial fields that say what to measure, not how to train: they never enter the trial id, and their hash
# names each result row (a changed setting re-measures, nothing is retrained). The settings of metrics
# registered since live in Trial.metric_settings, hashed only when a block lists such a metric.
MEASUREMENT_FIELDS = ("metrics", "sharpness", "hessian", "corruption", "adaptive", "complexity", "measure")


class Resources(Settings):
    """What one trial holds. ``workers: 0`` trains in the Tune trial's own process (Train local mode)."""
    cpus: float = Field(1.0, gt=0)
    gpus: float = Field(0.0, ge=0)
    workers: int = Field(0, ge=0)


class ResumeEvery(Settings):
    """How often training saves a resume point (``checkpoints/<trial_id>/resume.pt``, not measured, replaced
    as it goes): every ``epochs`` epochs and/or every ``minutes`` minutes of training, whichever comes first;
    both null: never (a killed trial restarts from its last measured checkpoint)."""
    epochs: int | None = Field(None, ge=1)
    minutes: float | None = Field(10.0, gt=0)


class Measure(Settings):
    """Which data the geometry metrics see: the un-augmented split, first ``max_samples`` rows; and the
    BatchNorm statistics every eval-mode number uses: ``stored`` (as trained, the paper's protocol) or
    ``recalibrate`` (recomputed on the un-augmented training split before measuring)."""
    split: Literal["train", "test"] = "train"
    max_samples: int | None = Field(None, ge=1)
    batch_size: int = Field(512, ge=1)
    bn: Literal["stored", "recalibrate"] = "stored"


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
    sharpness: Sharpness = field(default_factory=Sharpness)
    hessian: Hessian = field(default_factory=Hessian)
    corruption: Corruption = field(default_factory=Corruption)
    adaptive: Adaptive = field(default_factory=Adaptive)
    complexity: Complexity = field(default_factory=Complexity)
    measure: Measure = field(default_factory=Measure)
    # settings key -> settings of the other listed metrics (those registered after the fields above)
    metric_settings: dict[str, Settings] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    resume_every: ResumeEvery = field(default_factory=ResumeEvery)
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
        data = self.to_dict()  # the settings as plain data: the hash predates their types
        settings = {k: data[k] for k in MEASUREMENT_FIELDS}
        if self.metric_settings:  # only when listed, so that registering a metric changes no existing hash
            settings["metric_settings"] = data["metric_settings"]
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=list).encode()).hexdigest()[:8]

    def to_dict(self) -> dict[str, Any]:
        """Plain data (settings as dicts, tuples kept): what Ray ships and a checkpoint stores."""
        out = {f.name: _plain(getattr(self, f.name)) for f in fields(self)}
        out["metric_settings"] = {k: _plain(v) for k, v in self.metric_settings.items()}
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Trial":
        """The trial ``to_dict`` gave, its settings validated back into their models; a field missing (a
        checkpoint written before the field existed) takes its default. ``ValueError`` on bad settings."""
        d = dict(d)
        d["checkpoints"], d["metrics"] = tuple(d["checkpoints"]), tuple(d["metrics"])
        for name, model in _settings_fields().items():
            if name in d:
                d[name] = model.model_validate(d[name])
        d["metric_settings"] = {k: _settings_model(k).model_validate(v)
                                for k, v in d.get("metric_settings", {}).items()}
        return cls(**d)


def _plain(value: Any) -> Any:
    return value.model_dump() if isinstance(value, BaseModel) else copy.deepcopy(value)


@functools.cache
def _settings_fields() -> dict[str, type[BaseModel]]:
    """Trial field -> its settings model, read from the annotations (one list: the fields themselves)."""
    hints = get_type_hints(Trial)
    return {f.name: hints[f.name] for f in fields(Trial)
            if isinstance(hints[f.name], type) and issubclass(hints[f.name], BaseModel)}


def _settings_model(key: str) -> type[Settings]:
    """The settings model of the registered metric whose settings live under ``key`` in metric_settings."""
    for m in registry.metrics():
        if m.settings_key == key and m.settings is not None:
            return m.settings
    raise ValueError(f"metric_settings: no registered metric has settings under {key!r}")
