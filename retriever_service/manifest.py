"""What a collection directory says about itself, typed: its files, its settings
(``collection.json``) and its generation manifest (``manifest.json``, swapped atomically by
each build). The writer and the read replicas both read them through here.

The manifest also names the encoder its generations' vectors were made with, and it is the
authority on it: ``realm reindex`` changes a collection's model by swapping in a manifest whose
generations are all of the new model (the commit point), then rewrites ``collection.json`` to
agree; a crash between the two leaves the manifest's word standing.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from realm.errors import StorageError
from realm.files import write_json_atomic
from realm.retriever.dense import METRIC
from realm.retriever.settings import CollectionSettings

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
SETTINGS = "collection.json"
STORE = "store.sqlite"
WAL_DIR = "wal"


@dataclass(frozen=True, slots=True)
class GenerationEntry:
    """One generation as the manifest lists it: the log sequence it covers and the sha256 of
    each of its files (relative to the collection directory)."""

    number: int
    last_sequence: int
    files: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "generation": self.number,
            "last_sequence": self.last_sequence,
            "files": dict(self.files),
        }

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> "GenerationEntry":
        return cls(
            int(payload["generation"]), int(payload["last_sequence"]), dict(payload["files"])
        )


# Generation 0: nothing built yet, nothing to verify, replay the log from the start.
EMPTY_ENTRY = GenerationEntry(0, 0)


def read_settings(directory: Path) -> tuple[str, CollectionSettings]:
    """The name and settings of a collection directory, with the encoder its manifest names
    (the one its served vectors were made with)."""
    payload = json.loads((directory / SETTINGS).read_text(encoding="utf-8"))
    settings = CollectionSettings.from_json(payload["settings"])
    manifest = _manifest(directory)
    if manifest is not None and manifest.get("encoder_fingerprint"):
        settings = replace(
            settings,
            embedding_model=manifest["model_id"],
            embedding_backend=manifest["embedding_backend"],
            encoder_fingerprint=manifest["encoder_fingerprint"],
        )
    return payload["name"], settings


def _manifest(directory: Path) -> dict[str, Any] | None:
    path = directory / MANIFEST
    if not path.exists():
        return None
    manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return manifest


def write_settings(directory: Path, name: str, settings: CollectionSettings) -> None:
    write_json_atomic(directory / SETTINGS, {"name": name, "settings": settings.to_json()})


def read_entries(
    directory: Path, settings: CollectionSettings, dimension: int
) -> list[GenerationEntry]:
    """Generations to try, newest first; generation 0 (empty) when nothing was built. A manifest
    of another format or another vector size is refused, naming the fix."""
    path = directory / MANIFEST
    manifest = _manifest(directory)
    if manifest is None:
        return [EMPTY_ENTRY]
    if manifest.get("format_version") != FORMAT_VERSION:
        raise StorageError(
            f"{path}: format_version={manifest.get('format_version')} is not "
            f"{FORMAT_VERSION}; this server cannot read it: re-ingest the collection"
        )
    if manifest.get("dimension") != dimension:
        raise StorageError(
            f"{path}: dimension={manifest.get('dimension')} but model "
            f"{settings.embedding_model} makes {dimension}-d vectors"
        )
    recorded = manifest.get("encoder_fingerprint")
    if recorded and settings.encoder_fingerprint and recorded != settings.encoder_fingerprint:
        # A reader that took the settings before a reindex swapped the manifest: read again.
        raise StorageError(
            f"{path}: its generations were made by encoder {recorded}, not "
            f"{settings.encoder_fingerprint} (the collection was reindexed meanwhile)"
        )
    return [GenerationEntry.from_json(entry) for entry in manifest["generations"]]


def entry_of(directory: Path, entries: list[GenerationEntry], number: int) -> GenerationEntry:
    """The manifest's entry for generation ``number``."""
    for entry in entries:
        if entry.number == number:
            return entry
    raise StorageError(f"generation {number} is not in {directory / MANIFEST}")


def write_manifest(
    directory: Path,
    settings: CollectionSettings,
    dimension: int,
    newest: GenerationEntry,
    fallback: GenerationEntry,
) -> None:
    """Swaps in a manifest serving ``newest``: the commit point of a build. ``fallback`` is
    loaded instead if the newest turns out damaged."""
    write_json_atomic(
        directory / MANIFEST,
        {
            "format_version": FORMAT_VERSION,
            "model_id": settings.embedding_model,
            "embedding_backend": settings.embedding_backend,
            "encoder_fingerprint": settings.encoder_fingerprint,
            "dimension": dimension,
            "metric": METRIC,
            "k1": settings.bm25.k1,
            "b": settings.bm25.b,
            "language": settings.language,
            "generations": [newest.to_json(), fallback.to_json()],
        },
    )
