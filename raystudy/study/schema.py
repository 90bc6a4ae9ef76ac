"""The study file's schema: pydantic models for the study, its blocks, their settings and the verdicts.

A study YAML has a ``name``, a ``storage`` root and one or more ``blocks``. Each block is a grid:
any axis field (``task, model, regime, seed, lr, momentum, batch_size, weight_decay, sam_rho,
factor, label_noise, target_scale``) may be a list, and the block expands to the full cross product
(``raystudy.study.grid``). Everything else in a block is fixed for all of its trials. A problem a model
finds raises a ``ValueError``/``SettingError`` that ``raystudy.study.load`` turns into one line naming the
field. Cost: importing it imports the metric registry only; validating a block imports the model and task
registries (and so torch, ~0.4 GB), so the report can read a study's ``verdicts`` section without torch.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, create_model, field_validator, model_validator

from raystudy import metrics as registry
from raystudy.metrics import CLASSIFICATION, SettingError, Settings, get_metric, list_metrics
from raystudy.study import bounds
# The trial's own settings models are the block's fields of the same names.
from raystudy.trial import Measure, Resources, ResumeEvery

REGULARISERS = ("aug", "wd", "sam")  # canonical order inside a regime name: "aug+wd+sam"
AXES = ("task", "model", "regime", "seed", "lr", "momentum", "batch_size", "weight_decay", "sam_rho",
        "factor", "label_noise", "target_scale")
METRICS = tuple(list_metrics())  # the registry's, in its order
CLASSIFICATION_METRICS = tuple(m.name for m in registry.metrics() if "functions" not in m.families)


# strict: `epochs: true` is not 1 and `lr: "0.1"` is not 0.1 (ints still pass as floats);
# no NaN or infinity anywhere (`lr: .nan` would train nothing, silently). The metrics' settings share it.
_Strict = Settings


# One plain path component: the study name is a folder under storage, so "..", "." or a leading dot
# would put (or --fresh delete) results outside the study's own folder.
NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
MAX_SEED = 2**63 - 1  # seeds feed 63-bit generators


class Analysis(_Strict):
    """The measuring actor pool, separate from training trials."""
    actors: int = Field(1, ge=1)
    cpus: float = Field(1.0, gt=0)
    gpus: float = Field(0.0, ge=0)


Scalar = float | int | str | None


class _Block(_Strict):
    """A block without its metrics' settings, which ``Block`` adds from the registry."""
    name: str = Field(pattern=NAME)
    family: Literal["functions", "circles", "images"]
    task: str | list[str]
    model: str | list[str]
    model_args: dict[str, Any] = Field(default_factory=dict)
    regime: str | list[str] = "base"
    seed: int | list[int] = 0
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float | list[float]
    momentum: float | list[float] = 0.9
    batch_size: int | None | list[int | None] = None
    weight_decay: float | list[float] = 5e-4
    sam_rho: float | list[float] = 0.05
    factor: float | list[float] | None = None
    label_noise: float | list[float] | None = None
    # Functions only: targets are target_scale * f (1 = the protocol's). None, not 1.0, is the default
    # so that any explicit value on a family without a target function is refused, 1 included (it
    # would say something the block does not do), through the same check as every unused setting.
    target_scale: float | list[float] | None = None
    schedule: Literal["constant", "cosine"] = "constant"
    # How the arithmetic runs, not what is learned: bf16 autocasts forward passes (CUDA; the CPU too,
    # fast only with bf16 instructions such as AVX512-BF16/AMX); compile runs the model through
    # torch.compile (eager, with a warning, if compilation fails).
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False
    epochs: int = Field(ge=1)
    checkpoints: list[int] | None = None  # epochs to checkpoint at; the last epoch always is
    n_train: int | None = Field(None, ge=1)
    n_test: int | None = Field(None, ge=1)
    # Real image datasets: the folder holding their releases (None: $RAYSTUDY_DATA, else
    # ~/.cache/raystudy/data). A location, not a setting: it does not enter the trial ids.
    data_root: str | None = None
    shuffle_seed: int | None = None
    metrics: list[str] = Field(default_factory=lambda: ["sam_sharpness"])
    measure: Measure = Field(default_factory=Measure)
    resources: Resources = Field(default_factory=Resources)
    resume_every: ResumeEvery = Field(default_factory=ResumeEvery)

    @field_validator(*AXES, mode="after")
    @classmethod
    def _non_empty(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("empty list: the grid would have no trials")
        return v

    @field_validator("regime", mode="after")
    @classmethod
    def _regimes(cls, v: str | list[str]) -> str | list[str]:
        return [canonical_regime(r) for r in v] if isinstance(v, list) else canonical_regime(v)

    @field_validator("metrics", mode="after")
    @classmethod
    def _metrics(cls, v: list[str]) -> list[str]:
        for i, m in enumerate(v):
            try:
                get_metric(m)
            except KeyError as err:
                raise ValueError(err.args[0]) from None
            if m in v[:i]:
                raise ValueError(f"{m!r} is listed twice")
        return v

    @field_validator("model", mode="after")
    @classmethod
    def _models(cls, v: str | list[str]) -> str | list[str]:
        from raystudy import models  # here: the registries import torch, which the report never needs
        for name in _as_list(v):
            if name not in models.list_models():
                raise ValueError(f"unknown model {name!r}; known: {', '.join(models.list_models())}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "_Block":
        from raystudy import tasks
        known = tasks.list_tasks(self.family)
        for name in _as_list(self.task):
            if name not in known:
                raise _field_error("task", f"unknown {self.family} task {name!r}; known: {', '.join(known)}")
        ckpts = self.checkpoints if self.checkpoints is not None else [self.epochs]
        if any(c < 0 or c > self.epochs for c in ckpts) or sorted(set(ckpts)) != list(ckpts) or not ckpts:
            raise _field_error("checkpoints", f"must be a non-empty increasing list of epochs in [0, {self.epochs}]")
        bad = [get_metric(m) for m in self.metrics if self.family not in get_metric(m).families]
        if bad:  # named with the first refused metric's requirement, and every other refused for the same reason
            need = _requires(bad[0])
            names = [m.name for m in bad if _requires(m) == need]
            # "fisher_rao need a classification task": the words refusals have always used for these
            verb = "need" if need == _requires(None) or len(names) > 1 else "needs"
            raise _field_error("metrics", f"{', '.join(names)} {verb} {need}, not {self.family!r}")
        if self.family == "circles" and self.factor is None:
            raise _field_error("factor", "circles blocks need a factor (inner/outer radius ratio in (0, 1))")
        if self.family != "circles" and self.factor is not None:
            raise _field_error("factor", f"only circles blocks take a factor, not {self.family!r}")
        for f in _as_list(self.factor):
            if f is not None and not 0 < f < 1:
                raise _field_error("factor", f"{f} is not in (0, 1)")
        for axis in AXES:
            # A repeated value (after canonicalisation: "sam+wd" == "wd+sam") would make two identical trials.
            # Counted in one pass: an axis may list 10^5 values (1 == 1.0, as in a list comparison).
            seen: set = set()
            for v in _as_list(getattr(self, axis)):
                if v in seen:
                    raise _field_error(axis, f"{v!r} is listed twice")
                seen.add(v)
        for a in _as_list(self.target_scale):  # finite already (allow_inf_nan=False)
            if a is not None and not a > 0:
                raise _field_error("target_scale", f"{a} is not > 0 (targets are target_scale * f)")
        for p in _as_list(self.label_noise):
            if p is not None and not 0 <= p <= 1:
                raise _field_error("label_noise", f"{p} is not a probability in [0, 1]")
        for name, lo in (("lr", 0.0), ("sam_rho", 0.0)):
            if any(x <= lo for x in _as_list(getattr(self, name))):
                raise _field_error(name, "must be > 0")
        for name in ("momentum", "weight_decay"):
            if any(x < 0 for x in _as_list(getattr(self, name))):
                raise _field_error(name, "must be >= 0")
        for name in ("seed", "shuffle_seed"):
            if any(s is not None and not 0 <= s <= MAX_SEED for s in _as_list(getattr(self, name))):
                raise _field_error(name, f"seeds must be integers in [0, 2^63 - 1]")
        # A setting the family does not use must not be silently ignored.
        unused = {"functions": ("label_noise", "data_root"),
                  "circles": ("n_train", "n_test", "data_root", "target_scale"),
                  "images": ("n_train", "n_test", "target_scale")}[self.family]
        for name in unused:
            if getattr(self, name) is not None:
                raise _field_error(name, f"{self.family} blocks do not use {name}")
        no_files = [t for t in _as_list(self.task) if not tasks.reads_files(self.family, t)]
        if self.data_root is not None and no_files:
            raise _field_error("data_root", f"task {no_files[0]!r} reads no files (it is generated or bundled), "
                               "so data_root would be ignored; remove it")
        if any(b is not None and b < 1 for b in _as_list(self.batch_size)):
            raise _field_error("batch_size", "must be >= 1 (or null for full batch)")
        for loc, problem in bounds.violations(self, bounds.BLOCK):
            raise _field_error(loc, problem)
        return self


def _requires(metric: registry.Metric | None) -> str:
    """What a block needs for ``metric``, as a refusal says it (None: the classification metrics' words)."""
    if metric is not None and metric.requires:
        return metric.requires
    families = metric.families if metric is not None else CLASSIFICATION
    if set(families) == set(CLASSIFICATION):
        return "a classification task"
    return f"{'an' if families[0][0] in 'aeiou' else 'a'} {' or '.join(families)} task"


# Each metric's settings are a Block field under its settings key (sharpness, hessian, adaptive, ...), typed by
# its own model with its defaults: the study file's keys are the registry's.
Block = create_model("Block", __base__=_Block, __module__=__name__,
                     **{m.settings_key: (m.settings, Field(default_factory=m.settings))
                        for m in registry.metrics() if m.settings is not None})


# What the verdicts may count, per group (README, "Verdicts"): a curvature metric in the sharpness group, a
# safety metric (a lower value is safer for ece and disagreement, a higher one for corruption_acc) in the
# safety group. "sam_sharpness" counts every measured radius; "sam_sharpness@0.005" one of them.
# Sharpness: every curvature column the registry marks (sam_sharpness first, the primary).
SHARPNESS_METRICS = ("sam_sharpness", *(m for m in registry.role_columns("sharpness") + registry.role_columns("hessian")
                                        if m != "sam_sharpness"))
_VERDICT_DEFAULT = tuple(c.name for c in registry.metric_columns() if c.verdict)
SAFETY_METRICS = ("ece", "corruption_acc", "disagreement", "jsd")


def _group_metric(name: str, known: tuple[str, ...]) -> str:
    base, _, rho = name.partition("@")
    if base not in known or (rho and base != "sam_sharpness"):
        raise ValueError(f"unknown metric {name!r} for this group; known: {', '.join(known)} "
                         "(and sam_sharpness@RHO for one radius)")
    if rho:
        try:
            if not float(rho) > 0:
                raise ValueError
        except ValueError:
            raise ValueError(f"{name!r}: the radius after @ must be a number > 0") from None
    return name


class VerdictGroup(_Strict):
    """The metrics one side of a claim rests on, and how they combine: ``all`` of them shown (each at level
    alpha: an intersection-union test, no correction needed) or a strict ``majority`` of them shown after
    Holm's correction over the group. Naming one or a few metrics with ``all`` makes them the primary ones."""
    metrics: list[str] = Field(min_length=1)
    combine: Literal["all", "majority"] = "all"


def _sharpness_group() -> VerdictGroup:
    return VerdictGroup(metrics=[m for m in SHARPNESS_METRICS if m in _VERDICT_DEFAULT])


def _safety_group() -> VerdictGroup:
    return VerdictGroup(metrics=["ece", "corruption_acc", "disagreement"])


class Verdicts(_Strict):
    """How the report decides each claim, declared in the study file before any result exists; the report
    states these settings beside its verdicts. ``alpha``: the level of every test (a false "supported", or a
    false "contradicted", has at most this probability). ``fit_tolerance``: family A leaves out a target
    whose worst seed has relative train MSE (train MSE / target variance) above this, with all its seeds.
    ``sharpness`` and ``safety``: the metrics behind "sharper" (families A, B, C) and "safer" (C)."""
    alpha: float = Field(0.05, gt=0, lt=0.5)
    fit_tolerance: float = Field(0.05, gt=0)
    sharpness: VerdictGroup = Field(default_factory=_sharpness_group)
    safety: VerdictGroup = Field(default_factory=_safety_group)

    @model_validator(mode="after")
    def _known(self) -> "Verdicts":
        for group, known in (("sharpness", SHARPNESS_METRICS), ("safety", SAFETY_METRICS)):
            names = getattr(self, group).metrics
            for i, name in enumerate(names):
                try:
                    _group_metric(name, known)
                except ValueError as err:
                    raise _field_error((group, "metrics", i), str(err)) from None
                if name in names[:i]:
                    raise _field_error((group, "metrics", i), f"{name!r} is listed twice")
        return self


class Study(_Strict):
    name: str = Field(pattern=NAME)
    storage: str = "./runs"
    description: str = ""
    # Trials at once; default: as many as fit on the cluster as it is now. Set it on an autoscaling
    # cluster, which starts smaller than it grows.
    max_concurrent_trials: int | None = Field(None, ge=1)
    # Retries of a trial whose process dies (or whose training raises), each from its last resume point,
    # within the same run: Tune's FailureConfig, and Train's where the trial has real workers.
    max_failures: int = Field(2, ge=0)
    # The most trials the blocks may expand to, counted before expanding (`grid_size`): a typo in a grid
    # (10^7 trials) is refused in a second instead of filling memory. Raise it for a larger sweep.
    max_trials: int = Field(bounds.DEFAULT_MAX_TRIALS, ge=1)
    # Where Tune's per-epoch results (learning curves) go besides its CSV/JSON files: TensorBoard event
    # files in the study's ray/tune folder (tensorboardX), an MLflow experiment or a W&B project named
    # after the study (their usual environment variables say where: MLFLOW_TRACKING_URI, WANDB_API_KEY).
    loggers: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(default_factory=list)
    analysis: Analysis = Field(default_factory=Analysis)
    verdicts: Verdicts = Field(default_factory=Verdicts)
    blocks: list[Block] = Field(min_length=1)

    @field_validator("storage", mode="after")
    @classmethod
    def _storage(cls, v: str) -> str:
        if not v.strip():  # "" would resolve to the current directory
            raise ValueError("empty: name a folder (e.g. ./runs) or a bucket (s3://bucket/prefix)")
        return v

    @model_validator(mode="after")
    def _unique_blocks(self) -> "Study":
        for loc, problem in bounds.violations(self, bounds.STUDY):
            raise _field_error(loc, problem)
        sizes = [grid_size(b) for b in self.blocks]
        if sum(sizes) > self.max_trials:
            largest = max(range(len(sizes)), key=sizes.__getitem__)
            raise _field_error("max_trials", f"the blocks expand to {sum(sizes):,} trials (blocks[{largest}] "
                               f"{sizes[largest]:,}), more than max_trials ({self.max_trials:,}); shrink the grid "
                               "or raise max_trials")
        # Case-insensitively: block names become folder names, and some filesystems fold case.
        names = [b.name.lower() for b in self.blocks]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise _field_error(("blocks", i, "name"), f"duplicate block name {self.blocks[i].name!r} "
                                   f"(also blocks[{names.index(name)}], ignoring case)")
        return self


def canonical_regime(name: str) -> str:
    """``"SAM+wd"`` -> ``"wd+sam"``; ``"base"`` stays; unknown parts raise ``ValueError``."""
    parts = [p.strip().lower() for p in str(name).split("+")]
    if parts == ["base"]:
        return "base"
    unknown = [p for p in parts if p not in REGULARISERS]
    if unknown or len(set(parts)) != len(parts):
        raise ValueError(f"unknown regime {name!r}: use 'base' or '+'-joined parts of {', '.join(REGULARISERS)}")
    return "+".join(r for r in REGULARISERS if r in parts)


def grid_size(block: Block) -> int:
    """How many trials ``block`` expands to, counted from its axis lengths without building one: the
    product of the axes, where sam_rho multiplies only the regimes with SAM and weight_decay only those
    with wd (as in ``_expand_block``). Cost: one pass over the axes."""
    lengths = {axis: len(_as_list(getattr(block, axis))) for axis in AXES}
    rest = 1
    for axis in AXES:
        if axis not in ("regime", "sam_rho", "weight_decay"):
            rest *= lengths[axis]
    per_regime = sum((lengths["sam_rho"] if "sam" in r else 1) * (lengths["weight_decay"] if "wd" in r else 1)
                     for r in _as_list(block.regime))
    return rest * per_regime


def _as_list(v: Any) -> list:
    return list(v) if isinstance(v, list) else [v]


_FieldError = SettingError  # also what a metric's settings raise to name one of their fields


def _field_error(field_name: str | tuple[str | int, ...], msg: str) -> _FieldError:
    # Cross-field checks run on the whole block; this lets the message still name the field.
    return _FieldError(field_name, msg)
