"""Snapshots of a collection's sealed generation: how a replica joins a cluster whose log no
longer starts at record 1.

A snapshot is one tar file: the collection's settings, a manifest listing only the sealed
generation (with each file's sha256, checked again when the restored collection opens), the
generation's files, a consistent copy of the document store, and ``snapshot.json`` naming the
log sequence it covers. A restored replica opens it like any collection (rows written after that
sequence are rolled back, as after a crash) and consumes the log from the next sequence.
"""

import json
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from realm.errors import StorageError
from realm.retriever.collection import Collection
from realm.retriever.manifest import (
    EMPTY_ENTRY,
    SETTINGS,
    STORE,
    entry_of,
    read_entries,
    write_manifest,
)
from realm.retriever.manifest import MANIFEST as MANIFEST_FILE

SNAPSHOT_FILE = "snapshot.json"


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """What a snapshot covers: every log record up to ``sequence``, folded into ``generation``."""

    sequence: int
    generation: int

    def to_json(self) -> str:
        return json.dumps({"sequence": self.sequence, "generation": self.generation})

    @classmethod
    def from_json(cls, text: str) -> "SnapshotInfo":
        payload = json.loads(text)
        return cls(int(payload["sequence"]), int(payload["generation"]))


def pack(collection: Collection, into: Path) -> SnapshotInfo | None:
    """Writes a snapshot of the generation ``collection`` serves to ``into``; None when it has
    not built one yet (generation 0: the log itself is the snapshot)."""
    number = collection.snapshot().generation.number
    if number == 0:
        return None
    directory = collection.directory
    entries = read_entries(directory, collection.settings, collection.dimension)
    entry = entry_of(directory, entries, number)
    info = SnapshotInfo(entry.last_sequence, entry.number)
    with tempfile.TemporaryDirectory(dir=into.parent) as scratch:
        staging = Path(scratch)
        collection.store.copy_to(staging / STORE)
        write_manifest(staging, collection.settings, collection.dimension, entry, EMPTY_ENTRY)
        (staging / SNAPSHOT_FILE).write_text(info.to_json(), encoding="utf-8")
        with tarfile.open(into, "w") as tar:
            tar.add(directory / SETTINGS, SETTINGS)
            for relative in entry.files:
                tar.add(directory / relative, relative)
            for name in (STORE, MANIFEST_FILE, SNAPSHOT_FILE):
                tar.add(staging / name, name)
    return info


def unpack(archive: Path, directory: Path) -> SnapshotInfo:
    """Extracts a snapshot into the empty ``directory``; refuses an archive that is not one."""
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        missing = {SETTINGS, STORE, MANIFEST_FILE, SNAPSHOT_FILE} - names
        if missing:
            raise StorageError(
                f"{archive} is not a collection snapshot: it lacks {sorted(missing)}"
            )
        tar.extractall(directory, filter="data")  # no absolute paths, links or devices
    return SnapshotInfo.from_json((directory / SNAPSHOT_FILE).read_text(encoding="utf-8"))
