"""One prep run per output: a lock file in the manifest root, held for the whole run.

``ROOT/_prep.lock`` holds the holder's pid, host and start time as JSON. Its name starts with ``_``,
so pyarrow, dask and the manifest reader ignore it.

What holds where:

* Local disk (and NFS v3+, where ``O_EXCL`` creation is atomic): the file is created with
  ``O_CREAT | O_EXCL``, so of two runs starting together exactly one gets it; the other fails with
  `OutputLockedError` naming the holder. A lock whose pid no longer runs on this host (a run killed
  with SIGKILL, a machine that rebooted, a pid now used by a process younger than the lock) is
  stale and taken over. The takeover holds ``flock`` on the stale file and checks that the path
  still names that file, so two runs that find the same stale lock cannot both take it over. A lock from another host is never judged stale: this host cannot see the
  other's processes, so the error says to delete the file once that run is known to be gone.
* Object stores (s3://, gs://, ... any fsspec filesystem that is not local): plain S3 has no atomic
  create-if-absent, so the lock is best effort: it is checked, then written. It refuses a second run
  started after the first one wrote its lock, and names it; two runs started within the same moment
  may both proceed. Do not start two runs on one object-store output.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass

from manifests.storage import filesystem, is_local, join

logger = logging.getLogger(__name__)

LOCK_FILE = "_prep.lock"


class OutputLockedError(RuntimeError):
    """Another prep run holds the output's lock."""


def _holder_alive(pid: int, started_at) -> bool:
    """Whether process `pid` of this host runs and could have written a lock at `started_at`.

    A process that started after the lock was written is another one that got the dead holder's pid.
    """
    import psutil

    try:
        created = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # a live process we may not inspect
        return True
    return not isinstance(started_at, (int, float)) or created <= started_at + 1.0


def describe_holder(holder: dict) -> str:
    started = holder.get("started_at")
    when = (
        time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started))
        if isinstance(started, (int, float))
        else "?"
    )
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {when}"


@dataclass
class OutputLock:
    """The lock of the manifest root `root` (local path or fsspec URL); use as a context manager."""

    root: str
    token: str = ""

    def __post_init__(self):
        self.fs, path = filesystem(str(self.root).rstrip("/"))
        self.path = join(path, LOCK_FILE)
        self.local = is_local(self.fs)

    def _content(self) -> bytes:
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": time.time(),
            "token": self.token,
        }
        return (json.dumps(holder) + "\n").encode()

    def _read(self) -> dict:
        try:
            with self.fs.open(self.path, "rb") as f:
                holder = json.loads(f.read() or b"{}")
        except (OSError, ValueError):
            return {}  # vanished or half-written: the caller treats it as held by an unknown run
        return holder if isinstance(holder, dict) else {}

    def _locked_error(self, holder: dict, hint: str) -> OutputLockedError:
        return OutputLockedError(
            f"{self.root} is in use by another prep run ({describe_holder(holder)}); {hint}"
        )

    def _is_stale(self, holder: dict) -> bool:
        pid = holder.get("pid")
        return (
            holder.get("host") == socket.gethostname()
            and isinstance(pid, int)
            and not _holder_alive(pid, holder.get("started_at"))
        )

    def _create_local(self) -> bool:
        """Create the lock file exclusively; False if it already exists."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(self._content())
        return True

    def _take_over_local(self) -> bool:
        """Remove a stale lock file; False if it is not stale (or another run got to it first)."""
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return True  # released meanwhile: just try to create it again
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    return False  # another run is taking it over right now
                raise
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                return True
            if not same:
                return True  # replaced by a fresh lock since we opened it: look at that one
            holder = self._read()
            if not self._is_stale(holder):
                return False
            logger.warning(
                "removing the stale lock of a prep run that no longer runs (%s)", describe_holder(holder)
            )
            os.unlink(self.path)
            return True
        finally:
            os.close(fd)

    def acquire(self) -> OutputLock:
        self.token = uuid.uuid4().hex
        hint = (
            "wait for it to finish, or use another --out"
            if self.local
            else "wait for it to finish, or use another --out; if that run is gone, delete "
            + self.fs.unstrip_protocol(self.path)
        )
        if self.local:
            for _ in range(3):
                if self._create_local():
                    return self
                holder = self._read()
                if holder.get("host") not in (None, socket.gethostname()):
                    raise self._locked_error(holder, f"if that run is gone, delete {self.path}")
                if not self._take_over_local():
                    raise self._locked_error(holder, hint)
            raise self._locked_error(self._read(), hint)
        # Object stores: check, then write (best effort; see the module docstring).
        if self.fs.exists(self.path):
            holder = self._read()
            if not self._is_stale(holder):
                raise self._locked_error(holder, hint)
            logger.warning(
                "replacing the stale lock of a prep run that no longer runs (%s)", describe_holder(holder)
            )
        with self.fs.open(self.path, "wb") as f:
            f.write(self._content())
        return self

    def release(self) -> None:
        """Remove the lock file if it is still ours."""
        if self._read().get("token") != self.token:
            logger.warning("%s no longer holds this run's lock; leaving it", self.path)
            return
        try:
            self.fs.rm(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
