"""Errors that stop a training run, each with a message that says what to do."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """Base class for a training run that stopped on purpose."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or inf; nothing after the last good checkpoint was saved."""


class TrainingOOMError(TrainingError):
    """The accelerator ran out of memory; the message names the settings to lower."""


class DataCheckError(TrainingError, ValueError):
    """The data cannot serve the task (missing columns, nothing left after filtering)."""


class RunFolderError(TrainingError, ValueError):
    """``--out`` is not a folder this run may write into (user files, another task's run, an existing
    run without ``--resume`` or ``--overwrite``)."""


class TrackerMissingError(TrainingError):
    """``--report-to`` names a tracker whose package is not installed."""
