"""The documented range of every number in a study file, and the limits on reading the file itself.

A value outside its range is refused at load time with one line naming the file and the field, before
anything starts. The ranges are generous (a real study sits far inside them) and exist so that a typo such
as ``epochs: 1e12`` fails in a second instead of running for ever, allocating without limit, or overflowing
a counter. Each limit says why it is where it is. ``BLOCK`` is checked per block (paths are block fields,
dotted into sub-sections; a list is checked element by element), ``STUDY`` on the study's top level.
Cost: a few attribute reads per field, no allocation that grows with a value.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator


@dataclass(frozen=True)
class Range:
    """Accepted values: ``lo <= v <= hi`` (``lo < v`` when ``lo_open``); ``why`` the limit's reason."""
    lo: float
    hi: float
    why: str
    lo_open: bool = False

    def holds(self, v: float) -> bool:
        return (self.lo < v if self.lo_open else self.lo <= v) and v <= self.hi

    def text(self) -> str:
        return f"{'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}]"


MILLION = 1_000_000
BLOCK: dict[str, Range] = {
    # training
    "epochs": Range(1, 100_000, "the paper's longest schedule is 200 epochs; 10^5 is already years of GPU time"),
    "batch_size": Range(1, MILLION, "a batch larger than the largest dataset (TinyImageNet, 10^5 images) "
                        "is full batch; null says that"),
    "lr": Range(0, 100, "a step above 100 diverges for every model here", lo_open=True),
    "momentum": Range(0, 1, "heavy-ball momentum >= 1 does not converge"),
    "weight_decay": Range(0, 10, "a decay above 10 per unit lr shrinks every weight to zero in a few steps"),
    "sam_rho": Range(0, 10, "SAM's radius is an L2 distance in weight space; the paper sweeps 0.01-0.5",
                     lo_open=True),
    "target_scale": Range(0, MILLION, "targets above 10^6 x f lose float32 precision in the loss", lo_open=True),
    "n_train": Range(1, 10 * MILLION, "training points are generated and held in memory at once"),
    "n_test": Range(1, 10 * MILLION, "test points are generated and held in memory at once"),
    "checkpoints": Range(0, 100_000, "checkpoint epochs lie within epochs"),
    "model_args.hidden": Range(1, 2**20, "a layer wider than 2^20 units does not fit any accelerator's memory "
                               "(the model-size check bounds the whole network)"),
    "model_args.width": Range(1, 2**14, "the CNN's channel count; 2^14 channels exceed any memory"),
    # measuring
    "sharpness.rhos": Range(0, 10, "perturbation radius in weight space; the protocol uses 0.005", lo_open=True),
    "sharpness.draws": Range(1, 100_000, "each draw is one forward pass over the measured data"),
    "hessian.top_k": Range(1, 1_000, "each eigenvalue costs a Lanczos run of Hessian-vector products"),
    "hessian.trace_hvp": Range(3, 100_000, "one Hessian-vector product (~2-5 gradients) each"),
    "hessian.density_runs": Range(1, 1_000, "one Lanczos run each"),
    "hessian.density_steps": Range(2, 10_000, "Lanczos steps keep that many parameter-sized vectors"),
    "hessian.max_samples": Range(1, 10 * MILLION, "measured samples are held in memory"),
    "corruption.max_samples": Range(1, 10 * MILLION, "corrupted images are held in memory per corruption"),
    "adaptive.rho": Range(0, 10, "perturbation radius; the protocol uses 0.0005", lo_open=True),
    "adaptive.m": Range(1, 10 * MILLION, "m-sharpness batch; a batch above the data is all of it"),
    "adaptive.n_iter": Range(1, 10_000, "gradient-ascent steps per radius, each one gradient"),
    "adaptive.n_restarts": Range(1, 1_000, "each restart repeats n_iter steps"),
    "adaptive.n_draws": Range(1, 100_000, "each draw is one forward pass over the measured data"),
    "complexity.lines": Range(1, 100_000, "lines x points forward evaluations are held at once"),
    "complexity.points": Range(2, 100_000, "lines x points forward evaluations are held at once"),
    "complexity.length": Range(0, MILLION, "input units; a segment longer than 10^6 leaves every data set",
                               lo_open=True),
    "measure.max_samples": Range(1, 10 * MILLION, "measured samples are held in memory"),
    "measure.batch_size": Range(1, MILLION, "one measuring batch is held in memory with its graph"),
    "resources.cpus": Range(0, 1_024, "no node has more cores", lo_open=True),
    "resources.gpus": Range(0, 64, "no node has more accelerators"),
    "resources.workers": Range(0, 4_096, "data-parallel workers per trial; beyond it start-up dominates"),
    "resume_every.epochs": Range(1, 100_000, "within epochs"),
    "resume_every.minutes": Range(0, 100_000, "about ten weeks", lo_open=True),
}
STUDY: dict[str, Range] = {
    "max_trials": Range(1, MILLION, "expanded trials are held in memory (a few kB each) and each is a Tune trial"),
    "max_concurrent_trials": Range(1, 100_000, "trials at once; no cluster holds more"),
    "max_failures": Range(0, 1_000, "retries of one trial; beyond a few, the failure is not transient"),
    "analysis.actors": Range(1, 4_096, "measuring actors at once"),
    "analysis.cpus": Range(0, 1_024, "no node has more cores", lo_open=True),
    "analysis.gpus": Range(0, 64, "no node has more accelerators"),
    "verdicts.fit_tolerance": Range(0, MILLION, "relative train MSE; above 1 a fit is worse than the mean",
                                    lo_open=True),
}
DEFAULT_MAX_TRIALS = 100_000  # the study's `max_trials` default: a large sweep, still planned in seconds

# Reading the study file: what may be read before it is parsed.
MAX_FILE_BYTES = 1 << 20  # 1 MiB: the whole protocol (studies/full.yaml) is ~10 kB
MAX_DEPTH = 32  # YAML nesting (mappings and lists); a study needs 5; the parser recurses per level

# Model size: bytes per parameter while training and measuring (fp32 weights, gradients, optimiser state,
# and one more copy for SAM's perturbed weights or a Hessian-vector product's vectors).
BYTES_PER_PARAM = 4 * 4


def violations(obj: Any, table: dict[str, Range]) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """``(field path, problem)`` for every numeric value in ``obj`` (a pydantic model) outside its range in
    ``table``. Missing fields, None and non-numbers (bool included) are skipped: their own validation
    speaks for them."""
    for path, rng in table.items():
        value = obj
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
        values = value if isinstance(value, (list, tuple)) else [value]
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or rng.holds(v):
                continue
            loc = (*path.split("."), *((i,) if isinstance(value, (list, tuple)) and len(values) > 1 else ()))
            yield loc, f"{v:g} is outside {rng.text()} ({rng.why})"
            break
