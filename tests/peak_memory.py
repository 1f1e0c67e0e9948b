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
