"""Peak resident memory of the running program, for the tests that feed bombs under a memory cap.

`getrusage(RUSAGE_SELF).ru_maxrss` survives `execve`: a program started from a large test process (fork,
then exec) reports the parent's size at the fork. The kernel's high-water mark of the current address
space (`VmHWM` in /proc/self/status) starts anew at the exec, so it is the program's own.
"""

from __future__ import annotations

import resource


def own_peak_kb() -> int:
    """This program's peak resident set in KiB since its exec (ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


_LAUNCHER = """
import atexit, os, resource, runpy, sys
from peak_memory import own_peak_kb

def _report():
    with open(os.environ["HANDFIRST_PEAK_FILE"], "w") as f:
        f.write(str(max(own_peak_kb(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)))

atexit.register(_report)
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def run_module_measured(module: str, argv: list[str], env: dict, peak_file, timeout: float = 600):
    """``python -m MODULE ARGV`` in a fresh process: (exit code, stderr lines, peak RSS in MB), the peak
    being that program's own and its children's. `env` must put this folder on PYTHONPATH."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, module, *argv],
        env={**env, "HANDFIRST_PEAK_FILE": str(peak_file)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=timeout,
    )
    with open(peak_file) as f:
        peak_mb = int(f.read()) / 1024
    return proc.returncode, proc.stderr.decode().strip().splitlines(), peak_mb
