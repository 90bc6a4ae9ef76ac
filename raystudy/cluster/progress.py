"""The study's one progress line: trials k/N, checkpoints m/M, failures, elapsed and ETA.

On a terminal it is redrawn in place; otherwise (a log file, CI, ``nohup``) it is printed as a new line
at most every ``every_s`` seconds when something changed, and at least every ``quiet_s`` seconds while
nothing does, so a long study's log grows by a line now and then, not by a table per trial. The ETA extrapolates the rate at which this run has measured checkpoints (a checkpoint row is
the unit of work that ends a study); before the first one it is unknown and says so.
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
    already held when the run started (a resumed study starts part-way). ``out`` defaults to stdout;
    ``tty`` to whether it is a terminal; ``clock`` is injectable for tests."""

    def __init__(self, trials: int, checkpoints: int, trials_done: int = 0, checkpoints_done: int = 0,
                 out: TextIO | None = None, every_s: float = 15.0, quiet_s: float = 60.0, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.trials, self.checkpoints = trials, checkpoints
        self.trials_done, self.checkpoints_done, self._start_done = trials_done, checkpoints_done, checkpoints_done
        self.failed = self.not_measured = 0
        self.out = out or sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self.every_s, self.quiet_s, self.clock = every_s, quiet_s, clock
        self._said: tuple = ()  # the counts last printed (a log line repeats only as a heartbeat)
        self.t0 = clock()
        self._last: float | None = None
        self._drawn = False

    def trial_ended(self, failed: bool = False) -> None:
        self.trials_done += 1
        self.failed += failed
        self.tick()

    def checkpoint_measured(self, ok: bool = True) -> None:
        if ok:
            self.checkpoints_done += 1
        else:
            self.not_measured += 1
        self.tick()

    def line(self) -> str:
        """The progress line, e.g. ``trials 12/57  checkpoints 40/141  0 failed  1m12s  ETA 2m30s``."""
        elapsed = self.clock() - self.t0
        done_now = self.checkpoints_done - self._start_done
        left = max(self.checkpoints - self.checkpoints_done, 0)
        eta = "ETA -" if done_now == 0 else "done" if left == 0 else f"ETA {_duration(elapsed / done_now * left)}"
        bits = [f"trials {self.trials_done}/{self.trials}", f"checkpoints {self.checkpoints_done}/{self.checkpoints}",
                f"{self.failed} failed"]
        if self.not_measured:
            bits.append(f"{self.not_measured} not measured")
        return "  ".join(bits + [_duration(elapsed), eta])

    def tick(self, force: bool = False) -> None:
        """Print the line if it is due (on a terminal: always; otherwise every ``every_s`` s if the counts
        changed, every ``quiet_s`` s if not) or ``force``."""
        now = self.clock()
        counts = (self.trials_done, self.checkpoints_done, self.failed, self.not_measured)
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
        """The final state, on a line of its own."""
        if self.tty:
            self.tick(force=True)
            self.out.write("\n")
            self.out.flush()
        else:
            self.tick(force=True)
