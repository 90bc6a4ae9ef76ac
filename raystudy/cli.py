"""``raystudy``: one command for the study's stages. ``raystudy --help`` answers at once: it imports
nothing heavy (torch, Ray, polars load only when a subcommand runs)."""
from __future__ import annotations

import sys
from importlib import import_module

import raystudy

COMMANDS = {  # name -> (module whose main(argv) runs it, one line of help)
    "run": ("raystudy.run", "run or resume a study: train, measure every checkpoint, write the report"),
    "report": ("raystudy.report", "rebuild a study's report and verdicts from its stored results alone"),
    "data": ("raystudy.data.__main__", "fetch and check the image dataset releases (CIFAR, Tiny ImageNet, -C)"),
    "schema": ("raystudy.study_schema", "print the study file's JSON Schema (for editors)"),
}
HELP = f"""usage: raystudy [--version] [--help] COMMAND [ARGS...]

Ray-distributed studies of loss-landscape geometry: is a sharp minimum a sign of poor generalisation,
or a property of the function being learned?

commands:
{chr(10).join(f"  {name:<8}{text}" for name, (_, text) in COMMANDS.items())}

`raystudy COMMAND --help` describes a command. Examples:
  raystudy run studies/smoke.yaml            the default study, offline on a CPU (about 4 minutes)
  raystudy run studies/full.yaml --dry-run   its grid and cost; starts nothing
  raystudy report runs/smoke                 the report again, from stored results
  raystudy schema > study.schema.json        editor completion for study files

exit codes: 0 done; 1 some trials or measurements failed (listed) or storage was lost mid-run;
2 bad input (one line naming the file and field; nothing started); 130 interrupted (rerun to resume).
"""


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
    module = import_module(COMMANDS[argv[0]][0])
    if argv[0] == "schema":
        if argv[1:] and argv[1] in ("-h", "--help"):
            print("usage: raystudy schema\n\n" + (module.__doc__ or ""))
            return 0
        return module.main()
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
