"""A write-ahead log of numbered, checksummed records, fsynced before a write is acknowledged.

Record layout (little-endian): ``length u32 | sequence u64 | crc32 u32 | payload``, the CRC
covering the sequence and the payload. Records live in segment files named after the first
sequence they may hold; a segment is sealed when a generation build starts, so segments can be
deleted whole once every generation that might replay them is gone.

A crash can leave only the *last* record of the *last* segment incomplete (records are appended
in order and each append is fsynced before the next starts), so such a record is dropped on open.
A bad record anywhere else is damage, not a crash, and opening fails rather than skipping data.
"""

import logging
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

from realm.errors import StorageError
from realm.files import fsync_dir, make_durable_dir

_LOGGER = logging.getLogger(__name__)
_HEADER = struct.Struct("<IQI")
_SEQUENCE = struct.Struct("<Q")
SUFFIX = ".wal"
# A single record above this is refused on read as damage (Upsert messages are far smaller).
MAX_RECORD_BYTES = 1 << 31


def _checksum(sequence: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(_SEQUENCE.pack(sequence)))


def _segment_name(first_sequence: int) -> str:
    return f"{first_sequence:020d}{SUFFIX}"


class WriteAheadLog:
    """The log of one collection. Not thread-safe: the collection's write lock serialises it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        make_durable_dir(directory)
        self._segments = sorted(
            (int(p.name.removesuffix(SUFFIX)), p) for p in directory.glob(f"*{SUFFIX}")
        )
        self.last_sequence = 0
        self._handle: int | None = None
        self._broken: str | None = None
        self._scan()

    # ------------------------------------------------------------------ reading
    def _scan(self) -> None:
        """Checks every record, drops a torn end of the last segment, finds the last sequence."""
        for position, (_, path) in enumerate(self._segments):
            is_last = position == len(self._segments) - 1
            good_end = 0
            for sequence, _, end in self._records(path, strict=not is_last):
                if self.last_sequence and sequence != self.last_sequence + 1:
                    raise StorageError(
                        f"{path}: sequence {sequence} follows {self.last_sequence}; the "
                        "write-ahead log is damaged: restore the data directory from a backup"
                    )
                self.last_sequence = sequence
                good_end = end
            if is_last and good_end < path.stat().st_size:
                _LOGGER.warning(
                    "%s: dropped an incomplete last record (%d bytes) left by a crash",
                    path,
                    path.stat().st_size - good_end,
                )
                os.truncate(path, good_end)
                with path.open("rb+") as handle:
                    os.fsync(handle.fileno())

    @staticmethod
    def _records(path: Path, strict: bool) -> Iterator[tuple[int, bytes, int]]:
        """Yields ``(sequence, payload, end offset)``; stops at a torn record unless ``strict``."""
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            problem = None
            if offset + _HEADER.size > len(data):
                problem = "a truncated header"
            else:
                length, sequence, checksum = _HEADER.unpack_from(data, offset)
                start, end = offset + _HEADER.size, offset + _HEADER.size + length
                if length > MAX_RECORD_BYTES or end > len(data):
                    problem = "a truncated record"
                elif _checksum(sequence, data[start:end]) != checksum:
                    problem = "a checksum mismatch"
            if problem is not None:
                # Only an append cut short by a crash may be dropped: it ends the file, or what
                # follows it is the zero fill some file systems leave. Anything else is damage.
                torn = problem.startswith("a truncated") or not data[end:].strip(b"\0")
                if strict or not torn:
                    raise StorageError(
                        f"{path}: {problem} at byte {offset}, before the end of the log; the "
                        "write-ahead log is damaged: restore the data directory from a backup"
                    )
                return
            yield sequence, data[start:end], end
            offset = end

    def replay(self, after: int) -> Iterator[tuple[int, bytes]]:
        """Records with a sequence above ``after``, in order; fails if any of them is missing."""
        expected = after + 1
        for _, path in self._segments:
            for sequence, payload, _ in self._records(path, strict=False):
                if sequence < expected:
                    continue
                if sequence != expected:
                    raise StorageError(
                        f"{self.directory}: the log resumes at sequence {sequence} but the index "
                        f"needs {expected} next; a log segment is missing: restore the data "
                        "directory from a backup"
                    )
                expected += 1
                yield sequence, payload

    def resume_after(self, sequence: int) -> None:
        """Continues numbering after ``sequence`` when the index is ahead of the log's records.

        Happens to a collection restored from a cluster snapshot (it comes without a log), or
        if segments were removed by hand; what is left is older than the index, so it is
        dropped and numbering restarts in a fresh segment without a gap."""
        if sequence <= self.last_sequence:
            return
        _LOGGER.warning(
            "%s: the log ends at sequence %d but the index holds %d; continuing after %d",
            self.directory,
            self.last_sequence,
            sequence,
            sequence,
        )
        self.close()
        for _, path in self._segments:
            path.unlink()
        self._segments.clear()
        self.last_sequence = sequence

    # ------------------------------------------------------------------ writing
    def append(self, sequence: int, payload: bytes) -> None:
        """Writes one record and fsyncs it; on failure the log is as it was before the call."""
        if self._broken is not None:
            raise StorageError(self._broken)
        if sequence != self.last_sequence + 1:
            raise ValueError(f"sequence {sequence} does not follow {self.last_sequence}")
        handle = self._writer()
        start = os.lseek(handle, 0, os.SEEK_END)
        record = _HEADER.pack(len(payload), sequence, _checksum(sequence, payload)) + payload
        try:
            view = memoryview(record)
            while view:
                view = view[os.write(handle, view) :]
            os.fsync(handle)
        except OSError:
            self._cut(handle, start)
            raise
        self.last_sequence = sequence

    def undo_last(self, sequence: int, size: int) -> None:
        """Removes the last record (``size`` payload bytes) after its transaction failed."""
        handle = self._writer()
        end = os.lseek(handle, 0, os.SEEK_END)
        self._cut(handle, end - _HEADER.size - size)
        self.last_sequence = sequence - 1

    def _cut(self, handle: int, offset: int) -> None:
        try:
            os.ftruncate(handle, offset)
            os.fsync(handle)
        except OSError as error:
            self._broken = (
                f"{self.directory}: could not remove a failed record ({error}); writes stop "
                "until the server restarts, which drops it"
            )
            raise StorageError(self._broken) from error

    def _writer(self) -> int:
        if self._handle is None:
            if not self._segments:
                self._start_segment(self.last_sequence + 1)
            path = self._segments[-1][1]
            self._handle = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return self._handle

    def _start_segment(self, first_sequence: int) -> None:
        path = self.directory / _segment_name(first_sequence)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))
        fsync_dir(self.directory)
        self._segments.append((first_sequence, path))

    def seal(self) -> None:
        """Starts a new segment for records after ``last_sequence`` (called when a build starts)."""
        if self._segments and self._segments[-1][0] > self.last_sequence:
            return  # the open segment is still empty
        self.close()
        self._start_segment(self.last_sequence + 1)

    def remove_through(self, sequence: int) -> None:
        """Deletes segments whose records all have sequences ``<= sequence``."""
        keep_from = 0
        for position in range(len(self._segments) - 1):
            if self._segments[position + 1][0] - 1 <= sequence:
                keep_from = position + 1
        for _, path in self._segments[:keep_from]:
            path.unlink(missing_ok=True)
        if keep_from:
            del self._segments[:keep_from]
            fsync_dir(self.directory)

    @property
    def size_bytes(self) -> int:
        return sum(path.stat().st_size for _, path in self._segments if path.exists())

    def close(self) -> None:
        if self._handle is not None:
            os.close(self._handle)
            self._handle = None
