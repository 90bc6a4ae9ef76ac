"""``raystudy``: one command for the study's stages. ``raystudy --help`` answers at once: it imports
nothing heavy (torch, Ray, polars load only when a subcommand runs)."""
from __future__ import annotations

import argparse
import atexit
import os
import sys
import threading
from importlib import import_module

import raystudy

EXIT_CODES = ("exit codes: 0 done; 1 some trials or measurements failed (listed) or storage was lost mid-run;\n"
              "2 bad input (one line naming the file and field; nothing started); 130 interrupted (rerun to resume).")
COMMANDS = {  # name -> (module whose main(argv) runs it, one line of help)
    "run": ("raystudy.run", "run or resume a study: train, measure every checkpoint, write the report"),
    "report": ("raystudy.report", "rebuild a study's report and verdicts from its stored results alone"),
    "data": ("raystudy.data.__main__", "fetch and check the image dataset releases (CIFAR, Tiny ImageNet, -C)"),
    "schema": ("raystudy.study.json_schema", "print the study file's JSON Schema (for editors)"),
}
HELP = f"""usage: raystudy [--version] [--help] COMMAND [ARGS...]

Ray-distributed studies of loss-landscape geometry: is a sharp minimum a sign of poor generalisation,
or a property of the function being learned?

commands:
{chr(10).join(f"  {name:<8}{text}" for name, (_, text) in COMMANDS.items())}

'raystudy COMMAND --help' describes a command. Examples:
  raystudy run studies/smoke.yaml            the default study, offline on a CPU (about 4 minutes)
  raystudy run studies/full.yaml --dry-run   its grid and cost; starts nothing
  raystudy report runs/smoke                 the report again, from stored results
  raystudy schema > study.schema.json        editor completion for study files

{EXIT_CODES}
"""


def run_parser() -> argparse.ArgumentParser:
    """The options of ``raystudy run`` / ``python -m raystudy.run``: defined here, beside the command's help,
    so that ``--help`` answers without importing torch or Ray."""
    parser = argparse.ArgumentParser(prog="raystudy run", description="Run or resume a study: train, measure every "
                                     "checkpoint, write the report.", epilog=EXIT_CODES)
    parser.add_argument("study", help="study YAML file")
    parser.add_argument("--storage", help="store results here instead of the study file's storage")
    parser.add_argument("--fresh", action="store_true", help="delete this study's results and start over")
    parser.add_argument("--remeasure", action="store_true",
                        help="measure every checkpoint again (changed measurement settings re-measure by themselves)")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, a cluster that 'ray start' runs "
                                          "here, or a new local instance)")
    parser.add_argument("--num-cpus", type=int, help="CPUs for a newly started local Ray instance")
    parser.add_argument("--no-report", action="store_true", help="skip building the report")
    parser.add_argument("--png", action="store_true",
                        help="also draw a PNG beside the report page for each chart (the page draws them itself)")
    parser.add_argument("--logger", action="append", default=[], choices=["tensorboard", "mlflow", "wandb"],
                        help="also send Tune's per-epoch results here (repeatable; adds to the study's loggers)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the grid, missing datasets and the training device-hours; start nothing")
    parser.add_argument("--device", metavar="NAME",
                        help="with --dry-run: cpu or cuda (time it here), or a device profile of recorded "
                             "throughputs (h100, a100, l4)")
    talk = parser.add_mutually_exclusive_group()
    talk.add_argument("-q", "--quiet", action="store_true", help="print only the closing summary")
    talk.add_argument("-v", "--verbose", action="count", default=0,
                      help="-v: a [measured] line per checkpoint; -vv: also Tune's and Ray's own output "
                           "(status tables, every trial's configuration and result, worker logs)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(HELP, end="")
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"raystudy {raystudy.__version__}")
        return 0
    if argv[0] not in COMMANDS:
        print(f"raystudy: unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)} (raystudy --help)",
              file=sys.stderr)
        return 2
    if argv[0] == "run" and any(a in ("-h", "--help") for a in argv[1:]):
        run_parser().print_help()  # without importing the run module (torch, Ray)
        return 0
    module = import_module(COMMANDS[argv[0]][0])
    if argv[0] == "schema":
        if argv[1:] and argv[1] in ("-h", "--help"):
            print("usage: raystudy schema\n\n" + (module.__doc__ or ""))
            return 0
        return module.main()
    return module.main(argv[1:])


def exit_fast(code: int | None) -> None:
    """End a command-line process with ``code``: run the exit handlers (Ray's shutdown, logging's flush, any
    logger's), flush stdout and stderr, then leave without the interpreter's teardown, which frees every
    module's objects one by one (0.5-0.9 s after a study, with torch and Ray loaded, that the user waits for
    and nothing needs: every file this package writes is closed by then). Falls back to a normal exit while
    another non-daemon thread still runs, which the interpreter would wait for. Never call it from a library
    function: a notebook's kernel would end."""
    if any(t is not threading.main_thread() and not t.daemon and t.is_alive() for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can reach it
            pass
    os._exit(code or 0)


def script() -> None:
    """The ``raystudy`` console script."""
    exit_fast(main())


if __name__ == "__main__":
    script()
