"""Durable file primitives: atomic JSON replacement, directory fsync and checksums."""

import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Any

LOCK_FILE = "LOCK"


class DirectoryLocked(Exception):
    """Another process owns the directory (``lock_directory``)."""


def lock_directory(directory: Path) -> int:
    """Takes an exclusive lock on ``directory`` for as long as this process lives.

    Two servers on one data directory each believe they own its logs and stores, and silently
    undo each other's writes. ``flock`` on a lock file is released by the kernel when the
    process dies, however it dies, so no stale lock outlives a crash. Returns the descriptor
    holding the lock; the holder's pid is written in the file for the refusal message.
    """
    path = directory / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DirectoryLocked(
            f"{directory} is in use by another retriever (pid {holder}); stop it first, or "
            "give this server its own --data-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def fsync_dir(directory: Path) -> None:
    """Makes a rename or create inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_durable_dir(directory: Path) -> None:
    """Creates ``directory`` (and parents) if missing, making its entry durable when it does."""
    if directory.is_dir():
        return
    directory.mkdir(parents=True, exist_ok=True)
    fsync_dir(directory.parent)


def fsync_file(path: Path) -> None:
    with path.open("rb+") as handle:
        os.fsync(handle.fileno())


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Replaces ``path`` so that a crash leaves either the old or the new content, never a mix.

    Write a temporary sibling, fsync it, rename it over the target, fsync the directory.
    """
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, ensure_ascii=False)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)
    fsync_dir(path.parent)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
