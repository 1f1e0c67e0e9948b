"""The dispatcher of the project's command lines (`handfirst-prep`, `handfirst-manifests`, `handfirst-gen`).

A command line is a registry dict, subcommand -> (module, one-line description). Each module has
``HELP`` (its description), ``add_arguments(parser)`` and ``run(args) -> int``, and is imported only
when its subcommand is chosen, so the overview (no arguments, ``-h``, ``--help``) stays fast. Adding a
subcommand is one line in the registry.

The conventions the three command lines share live here, once:

- ``--version``, ``-q/--quiet`` (warnings, errors and results only; no progress bars) and
  ``-v/--verbose`` (``-v`` every library's INFO lines, native log lines and loading bars; ``-vv``
  debug). Without either, the project's own INFO lines show and other libraries keep to warnings.
  They may come before the subcommand (``handfirst-manifests -v validate DIR``); a command line's
  own ``common(parser)`` adds further shared options and its ``configure(args)`` reads them;
- the exit codes: `EXIT_OK` 0; `EXIT_FAILED` 1, the run failed; `EXIT_USAGE` 2, the command line or
  a setting is wrong (argparse's errors, an unknown subcommand, `SettingError`, `UsageError`);
  `EXIT_INTERRUPTED` 130, Ctrl-C. `fail` prints a command's error as one line and gives its code;
- the program's name in ``--help``: the console script's (``handfirst-manifests``), or
  ``python -m manifests`` when run that way (`program_name`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from importlib import import_module

from .settings import SettingError, UsageError

Registry = dict[str, tuple[str, str]]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# What exits with EXIT_USAGE when a command raises it or hands it to `fail`.
USAGE_ERRORS = (SettingError, UsageError)

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("handfirst")
    except PackageNotFoundError:
        return "unknown (not installed)"


def program_name(script: str, package: str, argv0: str | None = None) -> str:
    """How a command line names itself: `script` when run as the console script (or called from
    Python), ``python -m PACKAGE`` when run with ``python -m``."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    run_as_module = (
        os.path.basename(argv0) == "__main__.py" and os.path.basename(os.path.dirname(argv0)) == package
    )
    return f"python -m {package}" if run_as_module else script


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (some library messages span a paragraph)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def fail(where: str, exc: BaseException) -> int:
    """Print ``WHERE: error: MESSAGE`` to stderr; `EXIT_USAGE` for a usage or setting error, else
    `EXIT_FAILED`."""
    print(f"{where}: error: {one_line(exc)}", file=sys.stderr)
    return EXIT_USAGE if isinstance(exc, USAGE_ERRORS) else EXIT_FAILED


def overview(prog: str, commands: Registry) -> str:
    width = max(len(n) for n in commands)
    lines = [f"  {name.ljust(width)}  {desc}" for name, (_, desc) in commands.items()]
    return (
        f"usage: {prog} [--version] [-q | -v] COMMAND [options]\n\ncommands:\n"
        + "\n".join(lines)
        + "\n\nshared options: --version, -q/--quiet, -v/--verbose (-vv debug)"
        + f"\n\n`{prog} COMMAND --help` lists a command's options."
    )


def add_shared_arguments(parser: argparse.ArgumentParser, prog: str) -> None:
    """``--version``, ``-q/--quiet`` and ``-v/--verbose``: the options of every subcommand."""
    parser.add_argument("--version", action="version", version=f"{prog} {version()}")
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-q", "--quiet", action="store_true", help="warnings, errors and results only; no progress bars"
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="every library's log lines and loading bars (-vv: debug)",
    )


def verbosity(args: argparse.Namespace) -> int:
    """-1 quiet, 0 default, 1 verbose, 2 debug."""
    return -1 if getattr(args, "quiet", False) else min(int(getattr(args, "verbose", 0) or 0), 2)


def configure_logging(level: int, packages: tuple[str, ...]) -> None:
    """Log records at `level` (-1..2, see `verbosity`): the project's `packages` at INFO by default, other
    libraries at WARNING until ``-v``. Quiet turns tqdm's bars off (``TQDM_DISABLE``); below ``-v`` the
    Hugging Face libraries keep their INFO lines and loading bars to themselves."""
    root = {-1: logging.WARNING, 0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}[level]
    own = {-1: logging.WARNING, 0: logging.INFO, 1: logging.INFO, 2: logging.DEBUG}[level]
    logging.basicConfig(level=root, format=LOG_FORMAT)  # a no-op where handlers exist (pytest, notebooks)
    for name in packages:
        logging.getLogger(name).setLevel(own)
    if level < 0:
        os.environ["TQDM_DISABLE"] = "1"
    if level < 1:
        # Read when the libraries are imported, which the commands do after this.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        for name in ("accelerate", "diffusers", "transformers", "huggingface_hub"):
            logging.getLogger(name).setLevel(logging.WARNING)


def build_parser(
    prog: str, commands: Registry, name: str, common: Callable | None = None
) -> tuple[argparse.ArgumentParser, object]:
    """The parser of subcommand `name` (its module imported now) and the module."""
    module = import_module(commands[name][0])
    parser = argparse.ArgumentParser(prog=f"{prog} {name}", description=module.HELP)
    add_shared_arguments(parser, prog)
    parser.set_defaults(command=name, program=f"{prog} {name}")  # how the command names itself
    if common is not None:
        common(parser)
    module.add_arguments(parser)
    return parser, module


def dispatch(
    prog: str,
    commands: Registry,
    argv: list[str] | None = None,
    common: Callable | None = None,
    configure: Callable | None = None,
    errors: tuple[type[BaseException], ...] = (),
) -> int:
    """Run the subcommand `argv` names; its exit code. The overview for no subcommand or ``--help``;
    `EXIT_USAGE` with the overview for an unknown one. What the command raises of `errors` (the
    failures a user can fix: a missing file, a damaged manifest) is one ``error:`` line and
    `EXIT_FAILED`, of `USAGE_ERRORS` one line and `EXIT_USAGE`; anything else keeps its traceback.
    Ctrl-C is `EXIT_INTERRUPTED`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # The first registered name (an option's value may come before it: --log-level INFO generate), else
    # the first word, which is then unknown.
    position = next((i for i, a in enumerate(argv) if a in commands), None)
    if position is None:
        position = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if position is None:
        if "--version" in argv:
            print(f"{prog} {version()}")
            return EXIT_OK
        if not argv or {"-h", "--help"} & set(argv):
            print(overview(prog, commands))
            return EXIT_OK
        print(f"{prog}: no command given\n\n{overview(prog, commands)}", file=sys.stderr)
        return EXIT_USAGE
    name = argv[position]
    if name not in commands:
        print(f"{prog}: unknown command {name!r}\n\n{overview(prog, commands)}", file=sys.stderr)
        return EXIT_USAGE
    parser, module = build_parser(prog, commands, name, common)
    args = parser.parse_args(argv[:position] + argv[position + 1 :])
    try:
        if configure is not None:
            configure(args)
        return int(module.run(args) or 0)
    except USAGE_ERRORS + tuple(errors) as exc:
        return fail(f"{prog} {name}", exc)
    except KeyboardInterrupt:
        print(f"{prog} {name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
