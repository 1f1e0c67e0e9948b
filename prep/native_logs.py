"""Keep MediaPipe's native log lines out of a Dask worker's output.

MediaPipe's C++ core (TFLite, absl) writes straight to file descriptor 2 before absl's logging is
initialised, so neither Python's `logging` nor environment variables such as ``GLOG_minloglevel``
reach it: every model build and many inference threads print a line such as ``W0000 ...
inference_feedback_manager.cc:114] Feedback manager requires a model with a single signature`` --
about two per image per worker. In a worker process, `filter_native_stderr` puts a pipe behind fd 2
and forwards every line except those (`NATIVE_NOISE`) to the real stderr, so Python log records,
tracebacks and anything unexpected still come through.

``HANDFIRST_NATIVE_LOGS=1`` (set by ``-v`` on the command lines) leaves stderr untouched. The prep
driver is never filtered: pytest and notebooks own its file descriptors. `handfirst-gen`, which runs
MediaPipe in its own process (generate's and evaluate's detections), filters its stderr when it runs
as a program, and `restore_native_stderr` hands the real stderr back, every line forwarded, before it
exits.
"""

from __future__ import annotations

import os
import re
import sys
import threading

NATIVE_NOISE = re.compile(
    rb"^(?:[WI]\d{4} [\d:. ]+\s*\d+ \S+\.cc:\d+\]"  # absl/glog warning and info lines
    rb"|INFO: Created TensorFlow Lite XNNPACK delegate"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR)"
)
ENV_FLAG = "HANDFIRST_NATIVE_LOGS"

_installed = False
_lock = threading.Lock()
_saved: dict = {}  # the real stderr's fd and the pump thread, while the filter is in place


def _pump(read_fd: int, write_fd: int) -> None:
    with os.fdopen(read_fd, "rb", buffering=0) as source:
        pending = b""
        while chunk := source.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            kept = b"".join(line + b"\n" for line in lines if not NATIVE_NOISE.match(line))
            if kept:
                os.write(write_fd, kept)
        if pending and not NATIVE_NOISE.match(pending):
            os.write(write_fd, pending)


def filter_native_stderr() -> bool:
    """Filter this process's fd 2 (once); returns whether the filter is in place."""
    global _installed
    if os.environ.get(ENV_FLAG) == "1":
        return False
    with _lock:
        if not _installed:
            real = os.dup(2)
            read_fd, write_fd = os.pipe()
            os.dup2(write_fd, 2)
            os.close(write_fd)
            pump = threading.Thread(target=_pump, args=(read_fd, real), name="native-log-filter", daemon=True)
            pump.start()
            _saved.update(fd=real, pump=pump)
            _installed = True
    return True


def restore_native_stderr(timeout: float = 5.0) -> None:
    """Put the real stderr back on fd 2 and wait (up to `timeout` s) until the filter has forwarded
    every line written before; nothing when no filter is in place."""
    global _installed
    with _lock:
        if not _installed:
            return
        sys.stderr.flush()
        os.dup2(_saved["fd"], 2)  # closes the pipe's write end: the pump reads to its end and stops
        _saved["pump"].join(timeout)
        if not _saved["pump"].is_alive():  # else a child process still holds the pipe: keep its target open
            os.close(_saved["fd"])
        _saved.clear()
        _installed = False


def in_dask_worker() -> bool:
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return False
    return True
