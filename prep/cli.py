"""`handfirst-prep` / `python -m prep`: a thin argparse layer over `prep.run`.

Subcommands live in the `COMMANDS` registry (`manifests.dispatch`, as for `handfirst-manifests` and
`handfirst-gen`, with the same ``--version``, ``-q``/``-v`` and exit codes): one module each in
`prep.commands`, imported only when chosen.
"""

from __future__ import annotations

import argparse
import logging
import os

from manifests.dispatch import build_parser as build_command_parser
from manifests.dispatch import configure_logging, dispatch, program_name, verbosity

from .native_logs import ENV_FLAG

PROG = "handfirst-prep"

# subcommand -> (module, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("prep.commands.run", "Annotate a dataset into Parquet manifests (resumable)."),
}


def build_parser(name: str = "run") -> argparse.ArgumentParser:
    """The parser of subcommand `name`, with the options every subcommand takes."""
    return build_command_parser(PROG, COMMANDS, name)[0]


def quiet_dask(level: int) -> None:
    """Set the level of distributed's loggers (importing it first: its import sets their levels)."""
    import distributed  # noqa: F401

    for name in list(logging.root.manager.loggerDict):
        if name == "distributed" or name.startswith("distributed."):
            logging.getLogger(name).setLevel(level)


def _configure(args: argparse.Namespace) -> None:
    level = verbosity(args)
    configure_logging(level, ("prep", "manifests"))
    quiet_dask(logging.DEBUG if level >= 2 else logging.WARNING)
    if level >= 1:  # let MediaPipe's native log lines through (prep.native_logs)
        os.environ[ENV_FLAG] = "1"


def main(argv: list[str] | None = None) -> int:
    return dispatch(program_name(PROG, "prep"), COMMANDS, argv, configure=_configure)


if __name__ == "__main__":
    raise SystemExit(main())
