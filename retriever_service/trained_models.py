"""Embedding models trained on a collection (``realm train retriever``), kept as versions in the
data directory: ``DATA/models/<collection>-v<N>/``, a sentence-transformers model directory with
its training record.

A version is named, not addressed by path, so that a collection records ``cranfield-v2`` and
keeps working when the data directory moves. The server offers every version in its own data
directory without an operator listing it: the operator put it there by training.
"""

import json
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from realm.retriever.embedder import Encoder, EncoderSpec

MODELS_DIR = "models"
# What makes a directory a finished version; training writes it last.
RECORD = "training.json"
EncoderLoader = Callable[[EncoderSpec], Encoder]
_VERSION = re.compile(r"^(?P<collection>[A-Za-z0-9][A-Za-z0-9._-]*)-v(?P<number>[1-9][0-9]*)$")


def models_root(data_dir: Path) -> Path:
    return data_dir / MODELS_DIR


def is_version_name(name: str) -> bool:
    return _VERSION.match(name) is not None


def trained_model(data_dir: Path, name: str) -> Path | None:
    """The directory of version ``name`` when it is a finished version here, else None."""
    if not is_version_name(name):
        return None
    directory = models_root(data_dir) / name
    return directory if (directory / RECORD).is_file() else None


def trained_versions(data_dir: Path) -> list[str]:
    """Every finished version in the data directory, by name."""
    root = models_root(data_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if trained_model(data_dir, p.name) is not None)


def next_version(data_dir: Path, collection: str) -> str:
    """``<collection>-v<N+1>`` after the highest N made for it so far (finished or not)."""
    root = models_root(data_dir)
    numbers = [0]
    if root.is_dir():
        for path in root.iterdir():
            found = _VERSION.match(path.name.removeprefix(".training-"))
            if found and found["collection"] == collection:
                numbers.append(int(found["number"]))
    return f"{collection}-v{max(numbers) + 1}"


def read_record(directory: Path) -> dict[str, Any]:
    record: dict[str, Any] = json.loads((directory / RECORD).read_text(encoding="utf-8"))
    return record


def resolving(data_dir: Path, load: EncoderLoader) -> EncoderLoader:
    """``load`` that also loads versions of this data directory by name: the spec keeps the
    name (what collections record) and the model is read from its directory."""

    def load_resolved(spec: EncoderSpec) -> Encoder:
        directory = trained_model(data_dir, spec.model)
        return load(spec if directory is None else replace(spec, model=str(directory)))

    return load_resolved
