"""The state a collection's writer serves, shared with worker processes through a mapped file.

A worker answers a search itself only while it holds exactly the state the writer serves; it
checks that on every search, so the check must cost next to nothing: 24 bytes of a shared
memory mapping (``generation``, ``sequence`` and a check word), no system call, no lock. The
writer publishes a write's sequence before it acknowledges the write, so a client that searches
after its write was acknowledged never gets an answer from before it. A torn read (the writer
was mid-copy) fails the check word and is read again.
"""

import mmap
import struct
from pathlib import Path

PUBLISHED_FILE = "published"
# The generation a deleted collection publishes: no worker serves it again.
WITHDRAWN = 2**64 - 1
_LAYOUT = struct.Struct("<QQQ")
_CHECK = 0x5245_414C_4D5F_5631  # "REALM_V1"
_READ_ATTEMPTS = 100


def _check_word(generation: int, sequence: int) -> int:
    return generation ^ sequence ^ _CHECK


class PublishedState:
    """One collection's ``(generation, sequence)``; written by one process, read by many."""

    def __init__(self, path: Path, writable: bool) -> None:
        self.path = path
        with path.open("r+b" if writable else "rb") as file:
            self._mapping = mmap.mmap(
                file.fileno(),
                _LAYOUT.size,
                access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ,
            )

    @classmethod
    def for_writer(cls, directory: Path) -> "PublishedState":
        path = directory / PUBLISHED_FILE
        with path.open("ab") as file:
            file.truncate(_LAYOUT.size)  # a new file reads as zeros, which fail the check
        return cls(path, writable=True)

    @classmethod
    def for_reader(cls, directory: Path) -> "PublishedState":
        """Raises FileNotFoundError when no writer has published the collection yet."""
        return cls(directory / PUBLISHED_FILE, writable=False)

    def publish(self, generation: int, sequence: int) -> None:
        self._mapping[:] = _LAYOUT.pack(generation, sequence, _check_word(generation, sequence))

    def withdraw(self) -> None:
        """Marks the collection deleted for every reader that still maps this file."""
        self.publish(WITHDRAWN, 0)

    def read(self) -> tuple[int, int] | None:
        """``(generation, sequence)``, or None when nothing consistent was published."""
        for _ in range(_READ_ATTEMPTS):
            generation, sequence, check = _LAYOUT.unpack(self._mapping)
            if check == _check_word(generation, sequence):
                return generation, sequence
        return None

    def close(self) -> None:
        self._mapping.close()
