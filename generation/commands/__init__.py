"""One module per `handfirst-gen` subcommand: ``HELP``, ``add_arguments(parser)``, ``run(args) -> int``.

The training commands share their option set-up and their `run` through `add_training_arguments` and
`run_training`; both import torch only when the command runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import os


def add_training_arguments(parser, config_cls) -> None:
    """``--config FILE`` plus one option per field of the `TrainConfig` subclass `config_cls`."""
    from manifests.settings import add_arguments, add_config_option

    add_config_option(parser, config_cls)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved settings, model sizes, estimated memory and steps, and exit without writing",
    )
    add_arguments(parser, config_cls)


def run_training(command: str, config_cls, args, train) -> int:
    """Build `config_cls` from ``--config`` overridden by the given options, call ``train(config)``
    and print a one-line summary; known errors are printed as ``handfirst-gen COMMAND: error: ...``
    and give exit code 1 (2 for a setting, `manifests.dispatch.fail`)."""
    from manifests.dispatch import fail
    from manifests.errors import ManifestError
    from manifests.settings import from_args, read_settings_file

    from ..models.loading import ModelFolderError
    from ..training.errors import TrainingError

    try:
        base = read_settings_file(args.config) if args.config else None
        if base is not None:
            # A run's config.json works too. Its `overwrite` was what that invocation did to its folder,
            # not a setting of the run: taken over, it would clash with --resume.
            base.pop("overwrite", None)
        config = from_args(config_cls, args, base)
        if getattr(args, "dry_run", False):
            from ..dry_run import training_plan

            print(training_plan(train, config))
            return 0
        result = train(config)
    except (TrainingError, ModelFolderError, ManifestError, ValueError, OSError) as exc:
        return fail(args.program, exc)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # one summary line per run, not per process
    state = "finished" if result.finished else "stopped (resume with --resume latest)"
    print(f"{state} at step {result.step}; final loss {rounded(result.final_loss)}; run folder {result.run}")
    return 0


def rounded(value, digits: int = 4) -> str:
    """A result number as people read it: 4 significant digits (``1.047``), ``n/a`` for None."""
    return "n/a" if value is None else f"{value:.{digits}g}"
