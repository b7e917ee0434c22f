"""A collection's passages as its indexes see them, read from the retriever's data directory, with
the collection's own BM25 over them (same analyzer, same parameters) to mine negatives and to
check synthetic queries.

Read from the data directory rather than through the service: training needs every passage, and
the API has no call that lists a collection. SQLite in WAL mode lets this read while a server
writes; what was live when the read began is what is trained on.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from realm.retriever.analyzer import Analyzer
from realm.retriever.bm25 import BM25Index
from realm.retriever.chunker import ChunkSpan
from realm.retriever.manifest import SETTINGS, STORE, read_settings
from realm.retriever.passages import indexed_text
from realm.retriever.settings import CollectionSettings
from realm.retriever.store import DocumentStore
from realm.retriever.topk import IntArray

# A sequence above any a store can reach: "what is live now".
_LATEST = 2**62


class TrainingInputError(ValueError):
    """Training cannot start with what it was given; the message names the input and the fix."""


@dataclass(frozen=True, slots=True)
class CollectionPassages:
    """Every live passage of one collection, in document-id order."""

    name: str
    settings: CollectionSettings
    doc_ids: list[str]
    # What the indexes see (title, then text) and, for the reader's prompts, the two apart.
    texts: list[str]
    titles: list[str]
    bodies: list[str]
    bm25: BM25Index
    analyzer: Analyzer
    doc_rows: dict[str, list[int]]

    @classmethod
    def read(cls, data_dir: Path, collection: str) -> "CollectionPassages":
        directory = data_dir / "collections" / collection
        if not (directory / SETTINGS).is_file():
            raise TrainingInputError(
                f"there is no collection {collection!r} in {data_dir}; give the retriever's "
                "--data-dir and a collection it holds (realm stats lists them)"
            )
        name, settings = read_settings(directory)
        store = DocumentStore(directory / STORE)
        doc_ids: list[str] = []
        texts: list[str] = []
        titles: list[str] = []
        bodies: list[str] = []
        try:
            for document, spans in store.live_documents(_LATEST):
                for _, start, end in spans:
                    doc_ids.append(document.doc_id)
                    texts.append(indexed_text(document, ChunkSpan(start, end)))
                    titles.append(document.title)
                    bodies.append(document.text[start:end])
        finally:
            store.close()
        if not texts:
            raise TrainingInputError(f"collection {collection!r} is empty; ingest documents first")
        analyzer = Analyzer(settings.language)
        bm25 = BM25Index.build([analyzer.tokens(text) for text in texts], settings.bm25)
        doc_rows: dict[str, list[int]] = {}
        for row, doc_id in enumerate(doc_ids):
            doc_rows.setdefault(doc_id, []).append(row)
        return cls(name, settings, doc_ids, texts, titles, bodies, bm25, analyzer, doc_rows)

    def bm25_top(self, query: str, k: int) -> IntArray:
        """The rows of the ``k`` best BM25 passages for ``query``, best first (ties by row)."""
        scores = self.bm25.scores(self.analyzer.tokens(query))
        matching = self.bm25.matching_rows(scores)
        order = np.lexsort((matching, -scores[matching]))
        return matching[order[:k]]
