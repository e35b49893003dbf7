"""The ``medtune`` command line: run, resume, status, report, backup, compare, export, predict,
plugins, doctor and bench, and the commands plugins add (see :mod:`medtune.commands`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from medtune import __version__, doctor
from medtune.commands import plugin_commands
from medtune.errors import MedtuneError
from medtune.registry import KINDS, registry
from medtune.tables import verbatim


#: The width of output that is not a terminal (a pipe or a file): wide enough that no table
#: column is cut.
PIPE_WIDTH = 10_000


def _cmd_plugins(args: argparse.Namespace, console: Console) -> int:
    reg = registry()
    infos = reg.plugins()  # collects every kind, so broken hooks are known below
    sources = Table(title="installed plugins")
    for column in ("plugin", "distribution", "version", "status"):
        sources.add_column(column)
    for info in infos:
        status = "[red]broken[/red]" if info.broken else "ok"
        sources.add_row(verbatim(info.name), verbatim(info.distribution), verbatim(info.version),
                        status)
    console.print(sources)
    provided = Table(title="what they provide")
    for column in ("kind", "name", "plugin", "distribution"):
        provided.add_column(column)
    for kind in KINDS:
        for name, entries in sorted(reg.entries(kind).items()):
            conflict = " [red](conflict: provided twice)[/red]" if len(entries) > 1 else ""
            for entry in entries:
                provided.add_row(kind, verbatim(name) + conflict, verbatim(entry.plugin.name),
                                 verbatim(entry.plugin.distribution))
    for entry in reg.kernel_impls():
        impl = entry.factory
        label = f"{getattr(impl, 'op', '?')}/{getattr(impl, 'backend', '?')}"
        provided.add_row("kernel_impl", verbatim(label), verbatim(entry.plugin.name),
                         verbatim(entry.plugin.distribution))
    console.print(provided)
    for info in infos:
        for problem in info.problems:
            console.print(f"[red]broken:[/red] {verbatim(info.label)} {verbatim(problem)}")
    return 0


def _cmd_doctor(args: argparse.Namespace, console: Console) -> int:
    report = doctor.collect()
    table = Table(title="medtune doctor", show_header=False)
    table.add_column("item")
    table.add_column("value")
    for key, value in report.environment:
        table.add_row(verbatim(key), verbatim(value))
    console.print(table)
    ops = Table(title="kernel backends (chosen first, then the alternatives)")
    for column in ("op", "device", "uses", "alternatives"):
        ops.add_column(column)
    for row in report.ops:
        ops.add_row(*map(verbatim, (row.op, row.device, row.chosen, "; ".join(row.alternatives))))
    console.print(ops)
    return 0


def _cmd_bench(bench_args: list[str], console: Console) -> int:
    try:
        from benchmarks.runner import main as bench_main
    except ImportError:
        console.print(
            "[red]error:[/red] the benchmarks live in the source checkout; run `medtune bench` "
            "from the repository root (where the benchmarks/ folder is)."
        )
        return 2
    return bench_main(bench_args, prog="medtune bench")


def _cmd_study(args: argparse.Namespace, console: Console) -> int:
    from medtune import studies

    if args.command == "run":
        studies.run(args.config, console, scale=args.scale)
    elif args.command == "compare":
        studies.compare(args.studies, console, out=args.out)
    elif args.command == "backup":
        studies.backup(studies.locate(args.study), args.destination, console)
    elif args.command == "export":
        from medtune import export

        export.export(studies.locate(args.study), args.out, console, trial=args.trial)
    elif args.command == "predict":
        from medtune import export

        export.predict(args.model, args.input, args.output, console, labels=args.labels,
                       tta=args.tta)
    else:
        getattr(studies, args.command)(studies.locate(args.study), console)
    return 0


STUDY_HELP = "study file (.sqlite), or a study's name, looked up as studies/NAME.sqlite"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medtune",
        description="Tune medical-imaging deep learning: losses, search, kernels.",
    )
    parser.add_argument("--version", action="version", version=f"medtune {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run the study a TOML configuration describes")
    run.add_argument("config", nargs="?", default=None,
                     help="study configuration (TOML), e.g. examples/glf_small_lesions.toml; "
                          "without one, the built-in demo study")
    run.add_argument("--scale", type=float, default=None, metavar="S",
                     help="multiply what the configuration's [scale] table lists (sizes, "
                          "epochs, repeats) by S; the study gets its own file, <name>_xS")
    for name, text in (("resume", "continue a study whose driver stopped or was killed"),
                       ("status", "trial counts by state and the best trial of a study"),
                       ("report", "write a study's HTML report with plots")):
        commands.add_parser(name, help=text).add_argument("study", help=STUDY_HELP)
    backup = commands.add_parser(
        "backup", help="copy a study, even a running one, to one new self-contained file")
    backup.add_argument("study", help=STUDY_HELP)
    backup.add_argument("destination", help="the copy's file, which must not exist yet")
    compare = commands.add_parser(
        "compare", help="compare studies of several searchers and seeds in one figure and table")
    compare.add_argument("studies", nargs="+", help="study files (.sqlite), e.g. one per method "
                                                    "and seed; grouped by their searcher")
    compare.add_argument("--out", default=None, metavar="FOLDER",
                         help="where to write comparison.png and comparison.html (default: "
                              "comparison/ next to the first study)")
    export = commands.add_parser(
        "export", help="copy a trial's artifacts (its trained model) to a folder, with a manifest")
    export.add_argument("study", help=STUDY_HELP)
    export.add_argument("out", help="the new folder, which must not exist yet")
    export.add_argument("--trial", type=int, default=None, metavar="N",
                        help="the trial to export (default: the best one that kept artifacts)")
    predict = commands.add_parser(
        "predict", help="predict the inputs of a folder with an exported model or a study's best")
    predict.add_argument("model", help="a folder `medtune export` wrote, or a study (" + STUDY_HELP
                         + "): its best trial that kept artifacts")
    predict.add_argument("--input", required=True, metavar="DIR", help="the inputs to predict")
    predict.add_argument("--output", required=True, metavar="DIR",
                         help="where the predictions go: a new or empty folder")
    predict.add_argument("--labels", default=None, metavar="DIR",
                         help="reference labels of the inputs, to score the predictions")
    predict.add_argument("--tta", action="store_true",
                         help="test-time augmentation, where the task offers it")
    commands.add_parser("plugins", help="list every plugin by kind, broken ones marked")
    commands.add_parser("doctor", help="check Python, torch, Triton, compiler, kernels, GPU")
    # `medtune bench ARGS...` hands ARGS to the benchmark runner untouched (see main)
    commands.add_parser(
        "bench", help="measure medtune against its peers and write BENCHMARKS.md", add_help=False
    )
    for name, command in plugin_commands(set(commands.choices)).items():
        parser_of = commands.add_parser(name, help=command.help)
        command.add_arguments(parser_of)
        parser_of.set_defaults(plugin_command=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Piped or redirected output has no width to fit: tables show whole values instead of
    # cutting them at 80 columns. Emoji codes stay text (":x:" in a choice is not an emoji).
    console = Console(emoji=False)
    if not console.is_terminal:
        console = Console(emoji=False, width=PIPE_WIDTH)
    if argv[:1] == ["bench"]:
        sys.path.insert(0, ".")
        return _cmd_bench(argv[1:], console)
    args = build_parser().parse_args(argv)
    plugin_command = getattr(args, "plugin_command", None)
    handler = (plugin_command.run if plugin_command is not None else
               {"plugins": _cmd_plugins, "doctor": _cmd_doctor}.get(args.command, _cmd_study))
    try:
        return handler(args, console)
    except MedtuneError as exc:
        # one line; escaped, so a [table] named in the message is printed, not read as markup
        console.print(f"[red]error:[/red] {verbatim(exc)}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt as exc:
        # Ctrl-C: one line, no traceback, and the shell's status for SIGINT. A study says what
        # it recorded and how to continue (medtune.study.runner.StudyInterrupted).
        console.print(verbatim(str(exc) or "Interrupted."), highlight=False, soft_wrap=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
