"""The dispatcher of the project's command lines (`handfirst-prep`, `handfirst-manifests`, `handfirst-gen`).

A command line is a registry dict, subcommand -> (module, one-line description). Each module has
``HELP`` (its description), ``add_arguments(parser)`` and ``run(args) -> int``, and is imported only
when its subcommand is chosen, so the overview (no arguments, ``-h``, ``--help``) stays fast. Adding a
subcommand is one line in the registry.

Options every subcommand of a command line takes (logging, say) are added by its ``common(parser)``
and read by its ``configure(args)``; they may come before the subcommand too
(``handfirst-manifests -v validate DIR``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib import import_module

Registry = dict[str, tuple[str, str]]


def overview(prog: str, commands: Registry) -> str:
    width = max(len(n) for n in commands)
    lines = [f"  {name.ljust(width)}  {desc}" for name, (_, desc) in commands.items()]
    return (
        f"usage: {prog} COMMAND [options]\n\ncommands:\n"
        + "\n".join(lines)
        + f"\n\n`{prog} COMMAND --help` lists a command's options."
    )


def build_parser(
    prog: str, commands: Registry, name: str, common: Callable | None = None
) -> tuple[argparse.ArgumentParser, object]:
    """The parser of subcommand `name` (its module imported now) and the module."""
    module = import_module(commands[name][0])
    parser = argparse.ArgumentParser(prog=f"{prog} {name}", description=module.HELP)
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
) -> int:
    """Run the subcommand `argv` names; its exit code. The overview for no subcommand or ``--help``;
    exit code 2 with the overview for an unknown one."""
    argv = list(sys.argv[1:] if argv is None else argv)
    position = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if position is None:
        if not argv or {"-h", "--help"} & set(argv):
            print(overview(prog, commands))
            return 0
        print(f"{prog}: no command given\n\n{overview(prog, commands)}", file=sys.stderr)
        return 2
    name = argv[position]
    if name not in commands:
        print(f"{prog}: unknown command {name!r}\n\n{overview(prog, commands)}", file=sys.stderr)
        return 2
    parser, module = build_parser(prog, commands, name, common)
    args = parser.parse_args(argv[:position] + argv[position + 1 :])
    if configure is not None:
        configure(args)
    return int(module.run(args) or 0)
