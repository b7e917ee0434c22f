"""Reading data sets in BEIR format: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``."""

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

Qrels = dict[str, dict[str, int]]


@dataclass(frozen=True, slots=True)
class CorpusDocument:
    doc_id: str
    text: str
    title: str = ""


def read_corpus(path: Path) -> Iterator[CorpusDocument]:
    """Documents of a BEIR ``corpus.jsonl`` (``_id``, ``text``, ``title``)."""
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                row = json.loads(line)
                yield CorpusDocument(str(row["_id"]), row.get("text", ""), row.get("title") or "")


def read_queries(path: Path) -> dict[str, str]:
    with path.open(encoding="utf-8") as handle:
        return {str(row["_id"]): row["text"] for row in map(json.loads, handle) if row}


def read_qrels(path: Path) -> Qrels:
    """``query-id → corpus-id → grade``; rows with grade ≤ 0 are not relevant and are dropped."""
    qrels: Qrels = {}
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        header = next(reader)
        if header[:2] != ["query-id", "corpus-id"]:
            raise ValueError(f"{path}: expected a 'query-id corpus-id score' header, got {header}")
        for query_id, doc_id, grade in reader:
            if int(grade) > 0:
                qrels.setdefault(query_id, {})[doc_id] = int(grade)
    return qrels
