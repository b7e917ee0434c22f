"""Documents into passages as both indexes see them: chunked, each with the title before its
text, analysed into term counts. Writes and log replay go through this one function, so a
replayed write indexes exactly what the acknowledged one did."""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from realm.retriever.analyzer import Analyzer
from realm.retriever.chunker import ChunkerConfig, ChunkSpan, chunk
from realm.retriever.store import StoredDocument


@dataclass(frozen=True, slots=True)
class Analysed:
    """A write's documents, their passages' spans, texts and term counts, in passage order."""

    documents: list[StoredDocument]
    spans: list[list[ChunkSpan]]
    texts: list[str]
    term_counts: list[Counter[str]]

    @classmethod
    def joined(cls, parts: Sequence["Analysed"]) -> "Analysed":
        """The parts as one write, in order."""
        return cls(
            [document for part in parts for document in part.documents],
            [spans for part in parts for spans in part.spans],
            [text for part in parts for text in part.texts],
            [counts for part in parts for counts in part.term_counts],
        )

    @property
    def metadata(self) -> list[dict[str, str]]:
        """Each passage's document metadata (what search filters match)."""
        return [
            dict(document.metadata)
            for document, doc_spans in zip(self.documents, self.spans, strict=True)
            for _ in doc_spans
        ]


def analyse(
    documents: Sequence[StoredDocument], chunker: ChunkerConfig, analyzer: Analyzer
) -> Analysed:
    spans = [chunk(document.text, chunker) for document in documents]
    texts = [
        indexed_text(document, span)
        for document, doc_spans in zip(documents, spans, strict=True)
        for span in doc_spans
    ]
    return Analysed(list(documents), spans, texts, [Counter(analyzer.tokens(t)) for t in texts])


def indexed_text(document: StoredDocument, span: ChunkSpan) -> str:
    """What both indexes see for a passage: the title (when any), then the passage text."""
    return titled(document.title, document.text[span.start : span.end])


def titled(title: str, text: str) -> str:
    """A passage's text as it is indexed, from its title and its own text."""
    return f"{title}\n{text}" if title else text
