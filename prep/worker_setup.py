"""Dask preload for the workers of prep's LocalCluster: they ignore SIGINT.

Ctrl-C in a terminal reaches the whole process group, the worker processes included. The driver
answers it (it stops the cluster, keeps the completed shards and prints one line); a worker that
also took it would print its own KeyboardInterrupt traceback while shutting down.
"""

from __future__ import annotations

import signal
import threading


def dask_setup(worker) -> None:
    if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
        signal.signal(signal.SIGINT, signal.SIG_IGN)
