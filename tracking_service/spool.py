"""The spool writer: open and click events appended to segment files on local disk (drainer.py stores them).

Why a spool: an INSERT per request ran at about 0.3x a hello-world route, and a Redis XADD per request (even
grouped) still cost a network round trip: on this kind of host one round trip is more client CPU than Flask's
whole handling of a request. Appending a line to a file is one write(2) into the page cache. It also takes every
network dependency off the request path: opens and clicks keep being recorded while PostgreSQL or Redis are down.

- Every web worker process appends to its own active segment, opened with O_APPEND and held under an exclusive
  flock(2) for as long as the process writes to it. The request answers after write(2) returned, so from then on
  the event survives a crash of the tracking service (it is in the kernel's page cache); a flusher thread
  fdatasyncs the segment every TRACKING_SPOOL_FSYNC_SECONDS (1 s, as Redis' `appendfsync everysec`), or after
  every event when that is 0, so a crash of the machine loses at most that second.
- A segment is rotated at TRACKING_SPOOL_SEGMENT_BYTES; a new one is created under a temporary name, locked, then
  renamed into place, so a drainer never sees a segment that its writer does not hold yet.
- A segment whose flock can be taken has no writer any more (rotated, or the worker exited or was killed): it is
  sealed and will not grow.

The file names and the line format are in spool_format.py.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
import time
import weakref
from pathlib import Path

from campaigns.config import Settings
from tracking_service.spool_format import LOCK_PROBE_PREFIX, TEMPORARY_SUFFIX, encode_event, new_segment_name

log = logging.getLogger(__name__)


def buffer_event(spool: Spool, **event) -> None:
    """Append one open/click event (the keywords of `encode_event`); raises OSError when the disk refuses it."""
    spool.append(encode_event(**event))


class Spool:
    """This process's writer of spool segments; thread-safe, and safe across fork (each process writes its own).

    One write(2) per event, under a lock so that rotation never closes the descriptor under a writing thread.
    """

    def __init__(self, directory: str | os.PathLike, *,
                 segment_bytes: int = Settings.tracking_spool_segment_bytes,
                 fsync_seconds: float = Settings.tracking_spool_fsync_seconds) -> None:
        if segment_bytes < 1:
            raise ValueError(f"TRACKING_SPOOL_SEGMENT_BYTES must be at least 1, got {segment_bytes}")
        if fsync_seconds < 0:
            raise ValueError(f"TRACKING_SPOOL_FSYNC_SECONDS must be 0 or more, got {fsync_seconds}")
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.fsync_seconds = fsync_seconds
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._flushing_fd: int | None = None
        self._pid = 0
        self._size = 0
        self._dirty = False
        self._closed = threading.Event()
        self.segment: Path | None = None
        this = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (spool := this()) is not None and spool._after_fork())

    def _after_fork(self) -> None:
        # The child shares the parent's open segment (and its flock): keeping a descriptor of it would keep the
        # parent's segment looking live after the parent moved on. A lock held by another thread at fork time
        # would stay held in the child forever: start with a new one.
        self._lock = threading.Lock()
        for fd in (self._fd, self._flushing_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._flushing_fd = None
        self._dirty = False

    def append(self, line: bytes) -> None:
        """Write one complete line; returns once the kernel has it (it then survives a crash of this process)."""
        with self._lock:
            if self._fd is None or self._pid != os.getpid() or self._size >= self.segment_bytes:
                self._rotate()
            written = os.write(self._fd, line)
            self._size += written
            if written != len(line):
                # a short write (disk full): the torn line ends this segment, where the drainer rejects it, and the
                # next event starts a new one instead of being glued to it
                self._close_current()
                raise OSError(f"short write to tracking spool {self.segment}: {written} of {len(line)} bytes")
            if self.fsync_seconds == 0:
                os.fdatasync(self._fd)
            else:
                self._dirty = True

    def _rotate(self) -> None:
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._closed.clear()
            if self.fsync_seconds > 0:
                threading.Thread(target=self._flush_loop, name="tracking-spool-flush", daemon=True).start()
        self._close_current()
        self.directory.mkdir(parents=True, exist_ok=True)
        name = new_segment_name()
        temporary = self.directory / f".{name}{TEMPORARY_SUFFIX}"
        fd = os.open(temporary, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(temporary, self.directory / name)  # appears already locked: never mistaken for sealed
            _fsync_directory(self.directory)
        except BaseException:
            os.close(fd)
            temporary.unlink(missing_ok=True)
            raise
        self._fd, self._size, self.segment = fd, 0, self.directory / name

    def _close_current(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)  # releases the flock: the segment is sealed

    def _flush_loop(self) -> None:
        pid = os.getpid()
        while self._pid == pid and not self._closed.wait(self.fsync_seconds):
            try:
                self.flush()
            except Exception:  # the thread must outlive a failed sync: the next interval tries again
                log.exception("tracking spool: flushing %s failed", self.segment)

    def flush(self) -> None:
        """fdatasync what was appended since the last flush (the flusher thread calls this every interval)."""
        with self._lock:
            if not self._dirty or self._fd is None or self._pid != os.getpid():
                return
            # sync a duplicate outside the lock, so appends go on meanwhile
            fd = self._flushing_fd = os.dup(self._fd)
            self._dirty = False
        try:
            os.fdatasync(fd)
        finally:
            with self._lock:
                if self._flushing_fd == fd:
                    self._flushing_fd = None
                    os.close(fd)

    def close(self) -> None:
        """Seal the active segment (it is drained and deleted like any other) and stop the flusher."""
        self._closed.set()
        with self._lock:
            if self._pid == os.getpid():
                self._close_current()


def check_locking(directory: str | os.PathLike) -> None:
    """Refuse a file system whose flock(2) is not per open file (NFS, some FUSE/SMB mounts emulate it with POSIX
    locks, which never conflict within one process): there a drainer would take a live segment for a sealed one."""
    directory = Path(directory)
    probe = directory / f"{LOCK_PROBE_PREFIX}{os.getpid()}.{time.time_ns()}"
    first = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        second = os.open(probe, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(first, fcntl.LOCK_EX | fcntl.LOCK_NB)
            try:
                fcntl.flock(second, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            raise OSError(errno.ENOLCK, "flock(2) locks here are not per open file (a network file system?)")
        finally:
            os.close(second)
    finally:
        os.close(first)
        probe.unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
