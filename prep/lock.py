"""One prep run per output: a lock file in the manifest root, held for the whole run.

``ROOT/_prep.lock`` holds the holder's pid, host and start time as JSON. Its name starts with ``_``,
so pyarrow, dask and the manifest reader ignore it.

What holds where:

* Local disk (and NFS v3+, where ``link`` and ``O_EXCL`` creation are atomic): the file is written
  whole under a temporary name and hard-linked into place (``O_CREAT | O_EXCL`` where the filesystem
  has no hard links), so of two runs starting together exactly one gets it, and a lock is never seen
  half-written; the other fails with
  `OutputLockedError` naming the holder. A lock whose pid no longer runs on this host (a run killed
  with SIGKILL, a machine that rebooted, a pid now used by a process younger than the lock) is
  stale and taken over. The takeover holds ``flock`` on the stale file and checks that the path
  still names that file, so two runs that find the same stale lock cannot both take it over. A lock from another host is never judged stale: this host cannot see the
  other's processes, so the error says to delete the file once that run is known to be gone.
* Object stores (s3://, gs://, ... any fsspec filesystem that is not local): plain S3 has no atomic
  create-if-absent, so the lock is best effort: it is checked, then written. It refuses a second run
  started after the first one wrote its lock, and names it; two runs started within the same moment
  may both proceed. Do not start two runs on one object-store output.

The lock is read as any file prep wrote itself (`manifests.storage.read_bounded`): a regular file of
at most `MAX_LOCK_BYTES`. A lock that is not one (empty, not a JSON object naming a pid and host, a
directory, a FIFO, a link to a device) is refused with `OutputLockedError` naming the file to delete.
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

from manifests.storage import filesystem, is_local, join, loads_json, read_bounded, temporary_name

logger = logging.getLogger(__name__)

LOCK_FILE = "_prep.lock"
MAX_LOCK_BYTES = 64 * 2**10


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
        """The holder the lock names; {} when it is gone. A lock that is not one raises OutputLockedError."""
        where = self.path if self.local else self.fs.unstrip_protocol(self.path)
        try:
            raw = read_bounded(self.fs, self.path, MAX_LOCK_BYTES, label=where)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise self._broken(where, " ".join(str(exc).removeprefix(f"{where}: ").split())) from None
        try:
            holder = loads_json(raw) if raw else None
        except ValueError:
            holder = None
        if not isinstance(holder, dict) or not isinstance(holder.get("pid"), int) or not holder.get("host"):
            raise self._broken(where, "empty" if not raw else "not a JSON object naming a pid and a host")
        return holder

    def _broken(self, where: str, why: str) -> OutputLockedError:
        return OutputLockedError(
            f"{where} is not a prep lock ({why}); if no prep run is using {self.root}, delete it and rerun"
        )

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
        """Create the lock file, written whole, if it does not exist; False if it already exists."""
        tmp = temporary_name(self.path)
        with open(tmp, "xb") as f:
            f.write(self._content())
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            return False
        except OSError as exc:  # a filesystem without hard links
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS):
                raise
            return self._create_exclusive()
        finally:
            os.unlink(tmp)
        return True

    def _create_exclusive(self) -> bool:
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
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
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
        try:
            ours = self._read().get("token") == self.token
        except OutputLockedError:
            ours = False
        if not ours:
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
