"""Run a command line as a user does: ``python -m PACKAGE ARGS`` in a subprocess, this checkout first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_env(**extra: str) -> dict:
    """The environment of a subprocess that imports this checkout's packages."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        **extra,
    }


def run_module(package: str, *args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    """``python -m PACKAGE ARGS``: its exit code, stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", package, *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        env=module_env(**(env or {})),
        timeout=300,
    )


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]
