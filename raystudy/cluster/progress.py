"""The study's one progress line: trials k/N, checkpoints m/M, failures, elapsed and ETA.

On a terminal it is redrawn in place; otherwise (a log file, CI, ``nohup``) it is printed as a new line
at most every ``every_s`` seconds when something changed, and at least every ``quiet_s`` seconds while
nothing does, so a long study's log grows by a line now and then, not by a table per trial.

The ETA weighs the two kinds of work a study does, training a trial and measuring a checkpoint, by what
each has cost in this run so far, per block (a study's blocks differ by orders of magnitude: in the smoke
study a CNN checkpoint takes 20 times longer to measure than a function fit's), and divides the work left
by the rate at which this run has got work done (work done / elapsed, which counts the slots busy in
parallel). Counting checkpoints alone, as one kind, overestimates badly early on: measuring lags
training, and the costliest checkpoints are measured first. Until every block with work left has a cost
for each kind of work it has left, the ETA is unknown and says so ("ETA -"), rather than guess.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """Counts what a run has done and prints the progress line.

    ``trials``/``checkpoints``: the study's totals; ``trials_done``/``checkpoints_done``: what storage
    already held when the run started (a resumed study starts part-way). ``left``: ``{block: (trials,
    checkpoints)}`` this run has to do (default: all of it, one block ``""``). ``out`` defaults to stdout;
    ``tty`` to whether it is a terminal; ``clock`` is injectable for tests."""

    def __init__(self, trials: int, checkpoints: int, trials_done: int = 0, checkpoints_done: int = 0,
                 out: TextIO | None = None, every_s: float = 15.0, quiet_s: float = 60.0, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic, left: dict[str, tuple[int, int]] | None = None):
        self.trials, self.checkpoints = trials, checkpoints
        self.trials_done, self.checkpoints_done = trials_done, checkpoints_done
        self.failed = self.not_measured = 0
        if left is None:
            left = {"": (trials - trials_done, checkpoints - checkpoints_done)}
        self._left = {block: {"trial": t, "checkpoint": c} for block, (t, c) in left.items()}
        # this run's [count, seconds] of each kind of work, per block
        self._cost = {block: {"trial": [0, 0.0], "checkpoint": [0, 0.0]} for block in left}
        self.out = out or sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self.every_s, self.quiet_s, self.clock = every_s, quiet_s, clock
        self._said: tuple = ()  # the counts last printed (a log line repeats only as a heartbeat)
        self.t0 = clock()
        self._last: float | None = None
        self._drawn = False

    def trial_ended(self, failed: bool = False, seconds: float | None = None, block: str = "") -> None:
        """A trial of ``block`` ended (``failed`` after its retries); ``seconds``: its training time, if known."""
        self.trials_done += 1
        self.failed += failed
        self._spent(block, "trial", seconds)
        self.tick()

    def checkpoint_measured(self, ok: bool = True, seconds: float | None = None, block: str = "") -> None:
        """A checkpoint of ``block`` was measured (``ok``) or could not be; ``seconds``: its measuring time."""
        if ok:
            self.checkpoints_done += 1
            self._spent(block, "checkpoint", seconds)
        else:
            self.not_measured += 1
        self.tick()

    def _spent(self, block: str, kind: str, seconds: float | None) -> None:
        left = self._left.setdefault(block, {"trial": 0, "checkpoint": 0})
        left[kind] = max(left[kind] - 1, 0)
        if seconds is not None and seconds >= 0:
            count = self._cost.setdefault(block, {"trial": [0, 0.0], "checkpoint": [0, 0.0]})[kind]
            count[0] += 1
            count[1] += seconds

    def eta(self) -> float | None:
        """Seconds left (0 when nothing is), or None while some block's work left has no cost yet."""
        trials_left = max(self.trials - self.trials_done, 0)
        checkpoints_left = max(self.checkpoints - self.checkpoints_done - self.not_measured, 0)
        if not (trials_left or checkpoints_left):
            return 0.0
        work = {"trial": 0.0, "checkpoint": 0.0}  # seconds of work left, per kind
        for block, left in self._left.items():
            for kind, n in left.items():
                if n:
                    count, seconds = self._cost.get(block, {}).get(kind, (0, 0.0))
                    if not count:
                        return None
                    work[kind] += n * seconds / count
        # Checkpoints that could not be measured are not redone, and a resumed trial has some measured
        # already: the per-block counts are scaled to the study's own count of checkpoints left.
        planned = sum(left["checkpoint"] for left in self._left.values())
        if planned:
            work["checkpoint"] *= min(checkpoints_left / planned, 1.0)
        done = sum(seconds for kinds in self._cost.values() for _, seconds in kinds.values())
        elapsed = self.clock() - self.t0
        if done <= 0 or elapsed <= 0:
            return None
        return sum(work.values()) / (done / elapsed)

    def line(self) -> str:
        """The progress line, e.g. ``trials 12/57  checkpoints 40/141  0 failed  1m12s  ETA 2m30s``."""
        elapsed, left = self.clock() - self.t0, self.eta()
        eta = "ETA -" if left is None else "done" if left == 0 else f"ETA {_duration(left)}"
        bits = [f"trials {self.trials_done}/{self.trials}", f"checkpoints {self.checkpoints_done}/{self.checkpoints}",
                f"{self.failed} failed"]
        if self.not_measured:
            bits.append(f"{self.not_measured} not measured")
        return "  ".join(bits + [_duration(elapsed), eta])

    def _counts(self) -> tuple[int, int, int, int]:
        return self.trials_done, self.checkpoints_done, self.failed, self.not_measured

    def tick(self, force: bool = False) -> None:
        """Print the line if it is due (on a terminal: always; otherwise every ``every_s`` s if the counts
        changed, every ``quiet_s`` s if not) or ``force``."""
        now = self.clock()
        counts = self._counts()
        since = None if self._last is None else now - self._last
        due = since is None or since >= (self.every_s if counts != self._said else self.quiet_s)
        if not (self.tty or force or due):
            return
        self._last, self._said = now, counts
        if self.tty:
            self.out.write("\r\033[K" + self.line())
            self._drawn = True
        else:
            self.out.write(self.line() + "\n")
        self.out.flush()

    def say(self, text: str) -> None:
        """Print a line of its own without breaking the in-place progress line."""
        if self.tty and self._drawn:
            self.out.write("\r\033[K")
        self.out.write(text + "\n")
        self.out.flush()
        if self.tty and self._drawn:
            self.tick(force=True)

    def close(self) -> None:
        """The final state, on a line of its own (in a log, not again if the last line printed says it)."""
        if self.tty:
            self.tick(force=True)
            self.out.write("\n")
            self.out.flush()
        elif self._said != self._counts():
            self.tick(force=True)
