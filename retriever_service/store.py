"""SQLite document store with generation-aware visibility.

Rows carry the generation they were born in and the one that killed them. A build inserts its
rows for generation G+1 *before* the manifest swap; readers of generation G never look at them,
so the manifest rename stays the single commit point of a write. Rows of a build that never
committed are swept on start-up. SQLite runs in WAL mode: readers never block the writer.
"""

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from retriever_service.chunker import ChunkSpan

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    doc_key   INTEGER PRIMARY KEY,
    doc_id    TEXT NOT NULL,
    title     TEXT NOT NULL,
    text      TEXT NOT NULL,
    metadata  TEXT NOT NULL,
    born_gen  INTEGER NOT NULL,
    dead_gen  INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS documents_live_id ON documents(doc_id) WHERE dead_gen IS NULL;
CREATE INDEX IF NOT EXISTS documents_id ON documents(doc_id);
CREATE INDEX IF NOT EXISTS documents_born ON documents(born_gen);
CREATE INDEX IF NOT EXISTS documents_dead ON documents(dead_gen);
CREATE TABLE IF NOT EXISTS passages (
    pid      INTEGER PRIMARY KEY,
    doc_key  INTEGER NOT NULL REFERENCES documents(doc_key) ON DELETE CASCADE,
    ordinal  INTEGER NOT NULL,
    start    INTEGER NOT NULL,
    end      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS passages_doc ON passages(doc_key);
"""


@dataclass(frozen=True, slots=True)
class StoredDocument:
    """A document as stored: what the client sent."""

    doc_id: str
    text: str
    title: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PassageRecord:
    """Everything a search hit shows about one passage."""

    pid: int
    doc_id: str
    ordinal: int
    start: int
    end: int
    text: str
    title: str
    metadata: dict[str, str]

    @property
    def passage_id(self) -> str:
        return f"{self.doc_id}#{self.ordinal}"


@dataclass(frozen=True, slots=True)
class IndexRow:
    """What a generation build needs per live passage: its id, text to index and metadata."""

    pid: int
    indexed_text: str
    metadata: dict[str, str]


class DocumentStore:
    """One SQLite file per collection; one connection per thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._db().executescript(_SCHEMA)  # executescript manages its own transaction

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            self._local.db = db
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def stage_upsert(
        self,
        generation: int,
        documents: Sequence[StoredDocument],
        spans: Sequence[Sequence[ChunkSpan]],
    ) -> tuple[int, int]:
        """Inserts documents born in ``generation``, killing live ones with the same ids.

        Returns ``(inserted, replaced)``. Nothing is visible to readers until the manifest swap.
        """
        replaced = 0
        with self._write() as db:
            for document, doc_spans in zip(documents, spans, strict=True):
                killed = db.execute(
                    "UPDATE documents SET dead_gen = ? WHERE doc_id = ? AND dead_gen IS NULL",
                    (generation, document.doc_id),
                ).rowcount
                replaced += killed
                cursor = db.execute(
                    "INSERT INTO documents(doc_id, title, text, metadata, born_gen) "
                    "VALUES (?,?,?,?,?)",
                    (
                        document.doc_id,
                        document.title,
                        document.text,
                        json.dumps(document.metadata, ensure_ascii=False, sort_keys=True),
                        generation,
                    ),
                )
                db.executemany(
                    "INSERT INTO passages(doc_key, ordinal, start, end) VALUES (?,?,?,?)",
                    [(cursor.lastrowid, i, s.start, s.end) for i, s in enumerate(doc_spans)],
                )
        return len(documents) - replaced, replaced

    def stage_delete(self, generation: int, doc_ids: Iterable[str]) -> list[str]:
        """Marks live documents dead from ``generation`` on; returns the ids that were not live."""
        missing: list[str] = []
        with self._write() as db:
            for doc_id in doc_ids:
                killed = db.execute(
                    "UPDATE documents SET dead_gen = ? WHERE doc_id = ? AND dead_gen IS NULL",
                    (generation, doc_id),
                ).rowcount
                if not killed:
                    missing.append(doc_id)
        return missing

    def live_ids(self, generation: int, doc_ids: Iterable[str]) -> set[str]:
        """The subset of ``doc_ids`` live in ``generation``."""
        db = self._db()
        query = (
            "SELECT 1 FROM documents WHERE doc_id = ?2 AND born_gen <= ?1 "
            "AND (dead_gen IS NULL OR dead_gen > ?1)"
        )
        return {d for d in doc_ids if db.execute(query, (generation, d)).fetchone()}

    def roll_back_after(self, generation: int) -> None:
        """Forgets every change staged for generations after ``generation`` (a failed build)."""
        with self._write() as db:
            db.execute("DELETE FROM documents WHERE born_gen > ?", (generation,))
            db.execute("UPDATE documents SET dead_gen = NULL WHERE dead_gen > ?", (generation,))

    def purge_dead(self, up_to_generation: int) -> None:
        """Drops rows that no generation newer than ``up_to_generation - 1`` can reference."""
        with self._write() as db:
            db.execute("DELETE FROM documents WHERE dead_gen <= ?", (up_to_generation,))

    def index_rows(self, generation: int) -> list[IndexRow]:
        """Live passages of ``generation`` in pid order, with the text the indexes see."""
        rows = (
            self._db()
            .execute(
                """
            SELECT p.pid, d.title, substr(d.text, p.start + 1, p.end - p.start), d.metadata
            FROM passages p JOIN documents d ON p.doc_key = d.doc_key
            WHERE d.born_gen <= ?1 AND (d.dead_gen IS NULL OR d.dead_gen > ?1)
            ORDER BY p.pid
            """,
                (generation,),
            )
            .fetchall()
        )
        return [
            IndexRow(pid, f"{title}\n{text}" if title else text, json.loads(metadata))
            for pid, title, text, metadata in rows
        ]

    def passage_metadata(self, generation: int) -> dict[int, dict[str, str]]:
        """Metadata of every live passage of ``generation``, without reading any text."""
        rows = self._db().execute(
            """
            SELECT p.pid, d.metadata FROM passages p JOIN documents d ON p.doc_key = d.doc_key
            WHERE d.born_gen <= ?1 AND (d.dead_gen IS NULL OR d.dead_gen > ?1)
            """,
            (generation,),
        )
        return {pid: json.loads(metadata) for pid, metadata in rows}

    def passages(self, pids: Sequence[int]) -> dict[int, PassageRecord]:
        """Hydrates search hits. Rows stay readable until purged, so old generations still work."""
        if not pids:
            return {}
        marks = ",".join("?" * len(pids))
        rows = (
            self._db()
            .execute(
                f"""
            SELECT p.pid, d.doc_id, p.ordinal, p.start, p.end,
                   substr(d.text, p.start + 1, p.end - p.start), d.title, d.metadata
            FROM passages p JOIN documents d ON p.doc_key = d.doc_key
            WHERE p.pid IN ({marks})
            """,  # noqa: S608 -- only "?" placeholders are interpolated
                list(pids),
            )
            .fetchall()
        )
        return {
            pid: PassageRecord(pid, doc_id, ordinal, start, end, text, title, json.loads(metadata))
            for pid, doc_id, ordinal, start, end, text, title, metadata in rows
        }

    def document(
        self, generation: int, doc_id: str
    ) -> tuple[StoredDocument, list[PassageRecord]] | None:
        """The document live in ``generation`` with its passages, or None."""
        db = self._db()
        row = db.execute(
            """
            SELECT doc_key, title, text, metadata FROM documents
            WHERE doc_id = ?2 AND born_gen <= ?1 AND (dead_gen IS NULL OR dead_gen > ?1)
            """,
            (generation, doc_id),
        ).fetchone()
        if row is None:
            return None
        doc_key, title, text, metadata_json = row
        metadata = json.loads(metadata_json)
        passages = [
            PassageRecord(pid, doc_id, ordinal, start, end, text[start:end], title, metadata)
            for pid, ordinal, start, end in db.execute(
                "SELECT pid, ordinal, start, end FROM passages WHERE doc_key = ? ORDER BY ordinal",
                (doc_key,),
            )
        ]
        return StoredDocument(doc_id, text, title, metadata), passages

    def count_documents(self, generation: int) -> int:
        (count,) = (
            self._db()
            .execute(
                "SELECT count(*) FROM documents "
                "WHERE born_gen <= ?1 AND (dead_gen IS NULL OR dead_gen > ?1)",
                (generation,),
            )
            .fetchone()
        )
        return int(count)
