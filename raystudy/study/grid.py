"""Grid expansion: a validated study's blocks become its trials, each with a stable, readable id.

Every axis a block lists expands to the cross product (sam_rho only under regimes with SAM, weight_decay
only under those with wd). A trial's id is a readable prefix plus a hash of everything that shapes
training, so an edited setting never resumes from a stale checkpoint while an unchanged file gives the same
ids. Cost: linear in the number of trials (studies reach 10^5).
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import json
import re
from dataclasses import replace
from typing import Any

from raystudy import metrics as registry
from raystudy.study.load import StudyError
from raystudy.study.schema import AXES, Block, Study, _as_list
from raystudy.trial import MEASUREMENT_FIELDS, Trial


def expand(study: Study) -> list[Trial]:
    """The study's trials: every block's cross product, in file order. Ids are unique and stable."""
    trials = [t for block in study.blocks for t in _expand_block(study.name, block)]
    counts = collections.Counter(t.trial_id for t in trials)  # linear: studies reach 10^5 trials
    dupes = sorted(i for i, n in counts.items() if n > 1)
    if dupes:
        raise StudyError(f"blocks: duplicate trials {dupes[:3]} (a list repeats a value?)")
    return trials




def _expand_block(study: str, block: Block) -> list[Trial]:
    values = {axis: _as_list(getattr(block, axis)) for axis in AXES}
    varying = [a for a in AXES if len(values[a]) > 1 and a not in ("task", "model", "regime", "seed")]
    settings = _metric_settings(block)
    trials, seen = [], set()
    for combo in itertools.product(*(values[a] for a in AXES)):
        point = dict(zip(AXES, combo))
        regs = set(point["regime"].split("+"))
        trial = Trial(
            study=study, block=block.name, family=block.family, task=point["task"], model=point["model"],
            regime=point["regime"], seed=point["seed"], optimizer=block.optimizer, lr=point["lr"],
            momentum=point["momentum"], batch_size=point["batch_size"],
            weight_decay=point["weight_decay"] if "wd" in regs else 0.0,
            sam_rho=point["sam_rho"] if "sam" in regs else None, augment="aug" in regs,
            factor=point["factor"], label_noise=point["label_noise"], schedule=block.schedule,
            epochs=block.epochs, checkpoints=tuple(sorted({*(block.checkpoints or []), block.epochs})),
            n_train=block.n_train, n_test=block.n_test, data_root=block.data_root,
            shuffle_seed=block.shuffle_seed if block.shuffle_seed is not None else point["seed"],
            model_args=dict(block.model_args), metrics=tuple(block.metrics), **settings,
            measure=block.measure, resources=block.resources, resume_every=block.resume_every,
            precision=block.precision, compile=block.compile,
            target_scale=1.0 if point["target_scale"] is None else float(point["target_scale"]),
        )
        # An axis the regime does not use (sam_rho without sam, weight_decay without wd) neither names
        # the trial nor multiplies it: base trains once per seed in a SAM-radius sweep.
        used = [a for a in varying if not (a == "sam_rho" and "sam" not in regs)
                and not (a == "weight_decay" and "wd" not in regs)]
        trial = _with_id(trial, {a: point[a] for a in used})
        if trial.trial_id not in seen:
            seen.add(trial.trial_id)
            trials.append(trial)
    return trials


def _metric_settings(block: Block) -> dict[str, Any]:
    """Trial keyword arguments with the block's metric settings: the metrics that have a Trial field of their
    own (those registered before the registry existed) always, every other one under ``metric_settings`` and
    only when the block lists it, so a newly registered metric changes no existing trial's measure_hash."""
    own = {f.name for f in dataclasses.fields(Trial)}
    out: dict[str, Any] = {"metric_settings": {}}
    for m in registry.metrics():
        if m.settings_key in own:
            out[m.settings_key] = getattr(block, m.settings_key)
        elif m.settings_key is not None and m.name in block.metrics:
            out["metric_settings"][m.settings_key] = getattr(block, m.settings_key)
    return out


# Fields added after ids were first issued enter the hash only when set away from their default, so
# adding a field never changes the id (and orphans the checkpoints) of a trial that does not use it.
_HASHED_WHEN_SET = {"precision": "fp32", "compile": False, "target_scale": 1.0}
_ID_TAGS = {"lr": "lr", "momentum": "m", "batch_size": "bs", "weight_decay": "wd", "sam_rho": "rho",
            "factor": "f", "label_noise": "p", "target_scale": "a"}


def _with_id(trial: Trial, varying: dict[str, Any]) -> Trial:
    """Readable prefix + hash of everything that shapes training (not resources, resume points or
    metrics), so an edited setting never resumes from a stale checkpoint while an unchanged file gives
    the same ids."""
    shaping = {k: v for k, v in trial.to_dict().items()
               if k not in (*MEASUREMENT_FIELDS, "metric_settings", "resources", "resume_every", "trial_id", "data_root")
               and not (k in _HASHED_WHEN_SET and v == _HASHED_WHEN_SET[k])}
    digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:6]
    extra = "".join(f"-{_ID_TAGS[k]}{v:g}" if isinstance(v, float) else f"-{_ID_TAGS[k]}{v}"
                    for k, v in varying.items())
    readable = f"{trial.block}-{trial.task}-{trial.model}-{trial.regime}-s{trial.seed}{extra}"
    return replace(trial, trial_id=f"{re.sub(r'[^A-Za-z0-9_.+-]', '_', readable)}-{digest}")
