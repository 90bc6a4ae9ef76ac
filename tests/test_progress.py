"""The console: one progress line (in place on a terminal, throttled in a log), the closing lines, and a
rerun with nothing to do that starts no Ray and rebuilds no report."""
from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from raystudy.cluster.progress import Progress
from support.studies import function_block, write_study_yaml


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_line_counts_failures_and_eta():
    clock = Clock()
    p = Progress(trials=4, checkpoints=12, trials_done=1, checkpoints_done=3, out=io.StringIO(), tty=False,
                 clock=clock)
    assert p.line() == "trials 1/4  checkpoints 3/12  0 failed  0s  ETA -"
    clock.t += 30
    p.checkpoint_measured(seconds=6.0)
    p.checkpoint_measured(seconds=6.0)
    assert p.line().endswith("ETA -")  # no trial has ended yet: what one costs is unknown
    p.checkpoint_measured(ok=False)
    p.trial_ended(failed=True, seconds=30.0)
    # Work done: 30 s of training + 12 s of measuring in 30 s elapsed (1.4 slots busy). Left: 2 trials
    # at 30 s and 6 checkpoints at 6 s (the one not measured is not redone) = 96 s of work, 68.6 s at
    # that rate. Resumed rows count neither toward the rate nor the costs.
    assert p.eta() == pytest.approx(96 / 1.4)
    assert p.line() == "trials 2/4  checkpoints 5/12  1 failed  1 not measured  30s  ETA 1m09s"
    p.trial_ended(seconds=30.0)
    p.trial_ended(seconds=30.0)
    for _ in range(6):
        p.checkpoint_measured(seconds=6.0)
    assert p.line().endswith("30s  done")


def test_eta_is_not_fooled_when_measuring_lags_training():
    """A smoke-like run 40 s in: training ran ahead on both slots (20 of 57 four-second trials ended) while
    measuring caught only 5 of 141 one-second checkpoints: 85 s of work done in 40 s, 284 s of work left,
    so ~134 s. Extrapolating checkpoints alone would say 1,088 s."""
    clock = Clock()
    p = Progress(trials=57, checkpoints=141, out=io.StringIO(), tty=False, clock=clock)
    clock.t += 40
    for _ in range(20):
        p.trial_ended(seconds=4.0)
    for _ in range(5):
        p.checkpoint_measured(seconds=1.0)
    assert p.eta() == pytest.approx((37 * 4.0 + 136 * 1.0) / (85 / 40))
    assert p.line().endswith("ETA 2m14s")


def test_work_left_is_counted_per_block(tmp_path):
    """What the ETA weighs: per block, the trials to train and their checkpoints (here a fresh study)."""
    from raystudy.plan import plan
    from raystudy.run import work_left
    from support.studies import tiny_block
    study = write_study_yaml(tmp_path, "blocks", function_block(seed=[0, 1], checkpoints=[1, 2, 3]),
                             tiny_block(name="circles", epochs=2, checkpoints=[2]))
    p = plan(str(study))
    assert work_left(p, {t.trial_id: t.block for t in p.trials}) == {"fn": (2, 6), "circles": (1, 1)}


def test_measuring_costs_cpu_seconds_on_a_cpu_and_wall_seconds_on_a_gpu():
    """A CPU measurer waits behind training (nice 19): the wait is not work. A GPU's work is not on the CPU clock."""
    from raystudy.run import measuring_cost
    assert measuring_cost({"device": "cpu", "cpu_s": 8.0, "wall_s": 21.0}) == 8.0
    assert measuring_cost({"device": "NVIDIA H100 80GB HBM3", "cpu_s": 0.5, "wall_s": 3.0}) == 3.0
    assert measuring_cost({"device": "cpu", "cpu_s": None, "wall_s": 2.0}) == 2.0  # a row from before cpu_s


def test_log_output_is_throttled():
    clock, out = Clock(), io.StringIO()
    p = Progress(trials=2, checkpoints=100, out=out, tty=False, every_s=10, quiet_s=60, clock=clock)
    for _ in range(50):  # 50 results within 5 s: one line, not 50
        clock.t += 0.1
        p.checkpoint_measured()
    clock.t += 10
    p.checkpoint_measured()  # something changed and 10 s passed: a line
    clock.t += 30
    p.tick()  # nothing changed for 30 s: no line until the 60 s heartbeat
    clock.t += 30
    p.tick()
    p.close()  # the heartbeat line already says the final counts: not repeated
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("trials 0/2  checkpoints 51/100")
    p.trial_ended()
    p.close()  # a change since the last line: the final state is printed
    assert out.getvalue().splitlines()[-1].startswith("trials 1/2  checkpoints 51/100")


def test_terminal_line_is_redrawn_in_place_and_messages_keep_it():
    clock, out = Clock(), io.StringIO()
    p = Progress(trials=1, checkpoints=2, out=out, tty=True, clock=clock)
    p.checkpoint_measured()
    p.say("[measured] t epoch 1")
    p.checkpoint_measured()
    p.trial_ended()
    p.close()
    text = out.getvalue()
    assert text.count("\n") == 2  # the message and the final line; every redraw is "\r"
    assert "\r\033[K[measured] t epoch 1\n" in text and text.endswith("trials 1/1  checkpoints 2/2  0 failed  0s  done\n")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    code = textwrap.dedent(f"""
        import sys
        from raystudy.run import main
        code = main({list(args)!r})
        ray = sys.modules.get("ray")  # imported to look for a `ray start` cluster, perhaps; started?
        print("RAY_STARTED", ray is not None and ray.is_initialized())
        sys.exit(code)
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=cwd)


@pytest.mark.slow
def test_console_reads_like_a_summary_and_a_noop_rerun_starts_nothing(tmp_path):
    block = function_block(task=["sphere", "rastrigin"], seed=[0, 1], epochs=4, checkpoints=[0, 2, 4],
                           sharpness={"rhos": [0.005], "draws": 4})
    study = write_study_yaml(tmp_path, "mini", block, analysis={"actors": 1, "cpus": 1})
    first = _cli(str(study), "--num-cpus", "2", "-v", cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = first.stdout.splitlines()
    assert "Traceback" not in first.stdout + first.stderr and not first.stderr.strip(), first.stderr
    assert sum(line.startswith("[measured]") for line in out) == 12  # one per checkpoint, none lost
    started = [line for line in out if line.startswith("first trial started ")]  # -v: the start-up cost
    assert len(started) == 1 and started[0].endswith("s after launch"), out
    assert not any("Configuration for experiment" in line or "tensorboard" in line.lower() for line in out)
    assert len(out) < 40, "\n".join(out)
    assert out[-3].startswith("report: ") and out[-2].startswith("verdict A (fn): ")  # the answer last
    assert out[-4].startswith("summary: 4 of 4 trials finished, 12 checkpoints measured")
    report = tmp_path / "runs" / "mini" / "report" / "index.html"
    built = report.stat().st_mtime_ns
    assert not list(report.parent.glob("*.png"))  # PNGs only on request

    again = _cli(str(study), "-q", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    lines = again.stdout.splitlines()
    assert lines[-1] == "RAY_STARTED False"  # nothing to train or measure: Ray never started
    assert any("(current: built from these rows)" in line for line in lines)
    assert report.stat().st_mtime_ns == built and not lines[0].startswith("study mini")  # -q: summary only

    drawn = _cli(str(study), "-q", "--png", cwd=tmp_path)  # the current report has no PNGs: it is drawn again
    assert drawn.returncode == 0, drawn.stderr
    assert not any("(current" in line for line in drawn.stdout.splitlines()) and report.stat().st_mtime_ns > built
    pngs = sorted(report.parent.glob("*.png"))
    assert len(pngs) >= 2 and f'href="{pngs[0].name}"' in report.read_text()
    plain = _cli(str(study), "-q", cwd=tmp_path)  # PNGs there, none asked for: still current, nothing removed
    assert any("(current: built from these rows)" in line for line in plain.stdout.splitlines()), plain.stdout
    assert sorted(report.parent.glob("*.png")) == pngs

    (tmp_path / "runs" / "mini" / "results").joinpath("stray.parquet").write_bytes(b"")  # rows changed
    from raystudy.analysis.freshness import report_is_current
    from raystudy.storage import Store
    assert not report_is_current(Store(tmp_path / "runs" / "mini"))
