"""`handfirst-prep` / `python -m prep`: a thin argparse layer over `prep.run`.

Subcommands live in the `COMMANDS` registry (`manifests.dispatch`, as for `handfirst-manifests` and
`handfirst-gen`): one module each in `prep.commands`, imported only when chosen.
"""

from __future__ import annotations

import argparse
import logging
import os

from manifests.dispatch import build_parser as build_command_parser
from manifests.dispatch import dispatch

from .native_logs import ENV_FLAG

PROG = "handfirst-prep"

# subcommand -> (module, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("prep.commands.run", "Annotate a dataset into Parquet manifests (resumable)."),
}


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="More log output (-v info, -vv debug)."
    )


def build_parser(name: str = "run") -> argparse.ArgumentParser:
    """The parser of subcommand `name`, with the options every subcommand takes."""
    return build_command_parser(PROG, COMMANDS, name, _common)[0]


def quiet_dask(level: int) -> None:
    """Set the level of distributed's loggers (importing it first: its import sets their levels)."""
    import distributed  # noqa: F401

    for name in list(logging.root.manager.loggerDict):
        if name == "distributed" or name.startswith("distributed."):
            logging.getLogger(name).setLevel(level)


def _configure(args: argparse.Namespace) -> None:
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("prep").setLevel(min(level, logging.INFO))  # the dashboard address and shard plan
    quiet_dask(logging.DEBUG if args.verbose >= 2 else logging.WARNING)
    if args.verbose >= 2:  # debugging: let MediaPipe's native log lines through (prep.native_logs)
        os.environ[ENV_FLAG] = "1"


def main(argv: list[str] | None = None) -> int:
    return dispatch(PROG, COMMANDS, argv, _common, _configure)


if __name__ == "__main__":
    raise SystemExit(main())
