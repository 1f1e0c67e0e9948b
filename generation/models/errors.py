"""Errors of model loading, importable without torch (the checks before a run use them)."""

from __future__ import annotations


class ModelFolderError(FileNotFoundError):
    """A model folder is missing or lacks a part it needs."""
