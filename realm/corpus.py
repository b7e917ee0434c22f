"""Reading documents to ingest from the formats people have: BEIR, plain JSONL, text files."""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from client.retriever import Document

TEXT_SUFFIXES = (".txt", ".md")


@dataclass(frozen=True, slots=True)
class Refused:
    """A record that cannot become a document, and why: shown to the user, never dropped."""

    where: str
    reason: str


def read_documents(path: Path) -> Iterator[Document | Refused]:
    """Documents (or refusals) from a BEIR corpus, a JSONL file, or ``.txt``/``.md`` files."""
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES and p.is_file()
        )
        for file in files:
            yield _text_file(file, str(file.relative_to(path)))
    elif path.suffix.lower() in (".jsonl", ".json"):
        yield from _jsonl(path)
    elif path.suffix.lower() in TEXT_SUFFIXES:
        yield _text_file(path, path.name)
    else:
        raise ValueError(f"{path}: expected a .jsonl file, a .txt/.md file or a folder of them")


def _text_file(path: Path, doc_id: str) -> Document | Refused:
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        return Refused(doc_id, "the file is empty")
    return Document(id=doc_id, text=text, title=path.stem)


def _jsonl(path: Path) -> Iterator[Document | Refused]:
    seen: set[str] = set()
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path.name}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                yield Refused(where, f"not valid JSON ({error.msg})")
                continue
            doc_id = str(row.get("_id", row.get("id", "")))
            text = row.get("text") or ""
            metadata = row.get("metadata") or {}
            if not doc_id:
                yield Refused(where, "no 'id' (or BEIR '_id') field")
            elif not isinstance(text, str) or not text.strip():
                yield Refused(f"{where} (id {doc_id})", "no text")
            elif doc_id in seen:
                yield Refused(f"{where} (id {doc_id})", "the id appeared earlier in the file")
            elif not isinstance(metadata, dict):
                yield Refused(f"{where} (id {doc_id})", "'metadata' must be an object of strings")
            else:
                seen.add(doc_id)
                yield Document(
                    id=doc_id,
                    text=text,
                    title=str(row.get("title") or ""),
                    metadata={str(k): str(v) for k, v in metadata.items()},
                )
