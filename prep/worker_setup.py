"""Dask preload for the workers of prep's LocalCluster: they leave Ctrl-C to the driver.

Ctrl-C in a terminal reaches the whole process group, the worker processes included. The driver
answers it (it stops the cluster, keeps the completed shards and prints one line); a worker that
also took it would print its own KeyboardInterrupt traceback while shutting down. For the same
reason a worker whose scheduler has just been stopped under it does not print the traceback of its
failed heartbeat: with this preload the scheduler only ever goes away because the driver stopped it.
"""

from __future__ import annotations

import logging
import signal
import threading

# distributed's own message for a heartbeat that found the scheduler gone (logged with a traceback).
SCHEDULER_GONE = "Failed to communicate with scheduler during heartbeat"


class _SchedulerGone(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return SCHEDULER_GONE not in record.getMessage()


def dask_setup(worker) -> None:
    if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.getLogger("distributed.worker").addFilter(_SchedulerGone())
