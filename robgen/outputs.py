"""Who may write where: one run at a time per output folder, and no output over a file another command made.

Every command that writes checks its targets with `claim` before any work: an existing file needs overwrite=True,
and a file that belongs to a training run folder or a sample folder is never a target, whatever the flags (a report
derives sibling names, e.g. `--out RUN/config.png` also writes RUN/config.json). A sample folder is held with
`FolderLock` while a run writes into it, so a second run cannot clear or fill it at the same time.
"""
from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import Iterable

from . import run_folder, sample_folder
from .errors import RobgenError

# The files a `robgen train --out RUN` folder and a `robgen sample --out S` folder consist of: their owners'.
RUN_FILES = run_folder.FILES
SAMPLE_FILES = sample_folder.FILES
LOCK_NAME = ".robgen.lock"


def folder_kind(folder: Path) -> str | None:
    """'a training run' or 'a sample run' when `folder` holds one (by its marker files), else None."""
    if run_folder.is_run(folder):
        return "a training run"
    if sample_folder.is_sample_run(folder):
        return "a sample run"
    return None


def owner_of(path: Path) -> tuple[Path, str] | None:
    """(folder, kind) when `path` is one of the files of a run or sample folder above it, else None."""
    path = Path(os.path.abspath(path))
    for folder in path.parents:
        kind = folder_kind(folder)
        if kind is None:
            continue
        first = path.relative_to(folder).parts[0]
        files = RUN_FILES if kind == "a training run" else SAMPLE_FILES
        if first in files or first == LOCK_NAME:
            return folder, kind
    return None


def _writable(path: Path) -> None:
    """A one-line error when `path` cannot be created: a parent is a file, or the nearest folder is read-only."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise RobgenError(f"cannot write {path}: {parent} is a file, not a folder; choose another --out")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise RobgenError(f"cannot write {path}: {parent} is not writable; choose another --out")
            return


def claim(paths: Iterable[str | os.PathLike], overwrite: bool) -> list[Path]:
    """Check that every path may be written by this command; returns them as Paths. Call before any work."""
    paths = [Path(p) for p in paths]
    for path in paths:
        if (owned := owner_of(path)) is not None:
            folder, kind = owned
            raise RobgenError(f"{path} is a file of {kind} in {folder}; robgen never writes over it (even with "
                              "--overwrite): choose another --out")
        if path.is_dir():
            raise RobgenError(f"{path} is a folder; --out names a file here")
        _writable(path)
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        listing = ", ".join(str(p) for p in existing)
        raise RobgenError(f"{listing} already exist{'s' if len(existing) == 1 else ''}; pass --overwrite to replace "
                          f"{'it' if len(existing) == 1 else 'them'}, or choose another --out")
    return paths


class FolderLock:
    """An exclusive, non-blocking lock on OUT/.robgen.lock (flock: the kernel drops it when the holder dies, so a
    killed run never leaves a stale lock). The file stays in place: removing it would let two runs lock two files."""

    def __init__(self, folder: Path, what: str):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.folder.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise RobgenError(f"{self.folder} is being written by another {what} (pid {holder}); wait for it to "
                              "finish or choose another --out (--overwrite does not take a folder in use)") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None
