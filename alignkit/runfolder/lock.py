"""One writer per run folder: an exclusive lock held for the whole of `alignkit train` (and of
`alignkit eval`, on its output folder).

The lock is `fcntl.flock` on `OUTPUT_DIR/.alignkit.lock`. The kernel releases a flock when
the process that holds it exits, however it exits, so a crashed or killed run never leaves a
stale lock behind: the next run simply takes it. The file holds the owner's command, pid and
host, for the message the second run prints. Only the main process of an `accelerate launch` takes it
(one lock per run, not per process).

Where flock is unavailable (Windows, some network file systems) the run goes on with one
warning that nothing stops a second writer.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from alignkit.errors import AlignkitError

logger = logging.getLogger(__name__)

LOCK_FILE = ".alignkit.lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None


class RunLockedError(AlignkitError):
    """Another process is writing to the same run folder."""


class RunLock:
    """`with RunLock(output_dir):` hold the folder's lock; creates the folder if needed.

    `discard()` undoes what taking the lock created (the lock file, and the folders made for
    it when they are still empty), for a run that fails before writing anything: a bad input
    must leave the disk as it was.
    """

    def __init__(self, output_dir: str | os.PathLike, command: str = "alignkit train"):
        self.output_dir = Path(output_dir)
        # The command that takes the lock, for the message a second one prints.
        self.command = command
        self.path = self.output_dir / LOCK_FILE
        self.fd: int | None = None
        self.created: list[Path] = []

    def acquire(self) -> "RunLock":
        self._make_folder()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            self.discard()
            raise AlignkitError(f"--output-dir {self.output_dir}: cannot create {LOCK_FILE} "
                                f"({exc.strerror}); pass a folder you can write to") from None
        if fcntl is None:
            logger.warning("no file locking on this platform: make sure no other run writes to %s", self.output_dir)
            self.fd = fd
            return self
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder, owner = _read_owner(fd)
                os.close(fd)
                self.discard()
                raise RunLockedError(f"--output-dir {self.output_dir} is in use by another {holder or self.command}{owner}; "
                                     "wait for it to finish or pass another --output-dir") from None
            except OSError as exc:  # e.g. ENOLCK on a network file system without locks
                logger.warning("cannot lock %s (%s): make sure no other run writes to %s",
                               self.path, exc.strerror, self.output_dir)
                break
            # A run that just finished may have unlinked the file we opened: lock the live one.
            if _same_file(fd, self.path):
                break
            os.close(fd)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(fd, 0)
        os.write(fd, f"{self.command}, pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file (while still holding the lock, so no one locks a dead file), then unlock."""
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:  # a folder turned read-only mid-run: the kernel still drops the lock below
            pass
        os.close(self.fd)
        self.fd = None

    def discard(self) -> None:
        """Release, and remove the folders created for the lock if nothing else was put in them."""
        self.release()
        for folder in reversed(self.created):
            try:
                folder.rmdir()
            except OSError:  # not empty (the run wrote something) or already gone
                break
        self.created = []

    def _make_folder(self) -> None:
        missing = []
        folder = self.output_dir
        while not folder.exists() and folder.parent != folder:
            missing.append(folder)
            folder = folder.parent
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:
                continue
            except OSError as exc:
                self.discard()
                raise AlignkitError(f"--output-dir {self.output_dir}: cannot create {folder} ({exc.strerror}); "
                                    "pass a folder you can write to") from None
            self.created.append(folder)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_owner(fd: int) -> tuple[str, str]:
    """(the holder's command, " (pid P on HOST)") from the lock file; ("", ...) for a file that
    names no command (written by an older alignkit)."""
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        return "", ""
    command, sep, rest = text.partition(", ")
    if not sep or not rest.startswith("pid "):
        command, rest = "", text
    return command, f" ({rest})" if rest else ""


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
