"""SQLite document store with visibility by write-ahead-log sequence.

Rows carry the log sequence of the write that created them and of the one that killed them, so
a reader at sequence ``s`` sees exactly the documents live after write ``s``: searches hydrate
hits from the snapshot they ranked on, and start-up undoes every write past the served
generation (``roll_back_after``) and replays it from the log. SQLite runs in WAL mode: readers
never block the writer.
"""

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from realm.errors import StorageError
from realm.files import fsync_dir
from realm.retriever.chunker import ChunkSpan

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    doc_key   INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_id    TEXT NOT NULL,
    title     TEXT NOT NULL,
    text      TEXT NOT NULL,
    metadata  TEXT NOT NULL,
    born_seq  INTEGER NOT NULL,
    dead_seq  INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS documents_live_id ON documents(doc_id) WHERE dead_seq IS NULL;
CREATE INDEX IF NOT EXISTS documents_id ON documents(doc_id);
CREATE INDEX IF NOT EXISTS documents_born ON documents(born_seq);
CREATE INDEX IF NOT EXISTS documents_dead ON documents(dead_seq);
CREATE TABLE IF NOT EXISTS passages (
    pid      INTEGER PRIMARY KEY AUTOINCREMENT,
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


@dataclass(slots=True)
class StoreChange:
    """What one write did to the store, for the in-memory tail to mirror."""

    inserted: int = 0
    replaced: int = 0
    new_pids: list[int] = field(default_factory=list)
    killed_pids: list[int] = field(default_factory=list)
    deleted_ids: list[str] = field(default_factory=list)


class DocumentStore:
    """One SQLite file per collection; one connection per thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        # Every thread's connection, so that close() releases all their descriptors: a deleted
        # collection's files are freed only when the last one is closed.
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._closed = False
        created = not path.exists()
        self._db().executescript(_SCHEMA)  # executescript manages its own transaction
        if created:
            fsync_dir(path.parent)

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            with self._connections_lock:
                if self._closed:
                    raise StorageError(f"{self.path} is closed (its collection was deleted)")
                # Each connection is used by the thread that opened it only; check_same_thread
                # is off so that close() may close it from another thread.
                db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                self._connections.append(db)
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
        """Closes every thread's connection; later use raises StorageError."""
        with self._connections_lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for db in connections:
            db.close()
        self._local.db = None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed when the block ends, rolled back if it raises."""
        with self._write() as db:
            yield db

    @staticmethod
    def _kill(db: sqlite3.Connection, sequence: int, doc_id: str) -> tuple[bool, list[int]]:
        """Marks the live document ``doc_id`` dead at ``sequence``; returns its passage ids."""
        pids = [
            pid
            for (pid,) in db.execute(
                "SELECT p.pid FROM passages p JOIN documents d ON p.doc_key = d.doc_key "
                "WHERE d.doc_id = ? AND d.dead_seq IS NULL ORDER BY p.pid",
                (doc_id,),
            )
        ]
        killed = db.execute(
            "UPDATE documents SET dead_seq = ? WHERE doc_id = ? AND dead_seq IS NULL",
            (sequence, doc_id),
        ).rowcount
        return bool(killed), pids

    def upsert(
        self,
        db: sqlite3.Connection,
        sequence: int,
        documents: Sequence[StoredDocument],
        spans: Sequence[Sequence[ChunkSpan]],
    ) -> StoreChange:
        """Inserts documents born at ``sequence``, killing live ones with the same ids."""
        change = StoreChange()
        for document, doc_spans in zip(documents, spans, strict=True):
            killed, pids = self._kill(db, sequence, document.doc_id)
            change.replaced += killed
            change.killed_pids.extend(pids)
            doc_key = db.execute(
                "INSERT INTO documents(doc_id, title, text, metadata, born_seq) VALUES (?,?,?,?,?)",
                (
                    document.doc_id,
                    document.title,
                    document.text,
                    json.dumps(document.metadata, ensure_ascii=False, sort_keys=True),
                    sequence,
                ),
            ).lastrowid
            for ordinal, span in enumerate(doc_spans):
                cursor = db.execute(
                    "INSERT INTO passages(doc_key, ordinal, start, end) VALUES (?,?,?,?)",
                    (doc_key, ordinal, span.start, span.end),
                )
                change.new_pids.append(int(cursor.lastrowid or 0))
        change.inserted = len(documents) - change.replaced
        return change

    def delete(self, db: sqlite3.Connection, sequence: int, doc_ids: Iterable[str]) -> StoreChange:
        """Marks live documents dead at ``sequence``; ``deleted_ids`` are those that were live."""
        change = StoreChange()
        for doc_id in doc_ids:
            killed, pids = self._kill(db, sequence, doc_id)
            if killed:
                change.deleted_ids.append(doc_id)
                change.killed_pids.extend(pids)
        return change

    def copy_to(self, path: Path) -> None:
        """A consistent copy of the whole store (one read transaction): a snapshot's rows. The
        copy may hold writes after the snapshot's sequence; opening it rolls them back."""
        self._db().execute("VACUUM INTO ?", (str(path),))

    def roll_back_after(self, sequence: int) -> None:
        """Undoes every write after ``sequence``; start-up then replays them from the log."""
        with self._write() as db:
            db.execute("DELETE FROM documents WHERE born_seq > ?", (sequence,))
            db.execute("UPDATE documents SET dead_seq = NULL WHERE dead_seq > ?", (sequence,))

    def purge_dead(self, through_sequence: int) -> None:
        """Drops documents killed at or before ``through_sequence``: no kept snapshot sees them."""
        with self._write() as db:
            db.execute("DELETE FROM documents WHERE dead_seq <= ?", (through_sequence,))

    def passage_metadata(self, sequence: int) -> dict[int, dict[str, str]]:
        """Metadata of every live passage at ``sequence``, without reading any text."""
        rows = self._db().execute(
            """
            SELECT p.pid, d.metadata FROM passages p JOIN documents d ON p.doc_key = d.doc_key
            WHERE d.born_seq <= ?1 AND (d.dead_seq IS NULL OR d.dead_seq > ?1)
            """,
            (sequence,),
        )
        return {pid: json.loads(metadata) for pid, metadata in rows}

    def passages(self, pids: Sequence[int]) -> dict[int, PassageRecord]:
        """Hydrates search hits. Rows stay readable until purged, so older snapshots still work.

        SQLite packs the hits into one JSON row: Python's sqlite3 releases the GIL around every
        step, and with a row per hit a search handed the GIL away a dozen times, each time to
        any thread waiting for it (the gain under concurrent load is in docs/benchmarks.md).
        """
        if not pids:
            return {}
        marks = ",".join("?" * len(pids))
        (packed,) = (
            self._db()
            .execute(
                f"""
            SELECT json_group_array(json_array(p.pid, d.doc_id, p.ordinal, p.start, p.end,
                   substr(d.text, p.start + 1, p.end - p.start), d.title, json(d.metadata)))
            FROM passages p JOIN documents d ON p.doc_key = d.doc_key
            WHERE p.pid IN ({marks})
            """,  # noqa: S608 -- only "?" placeholders are interpolated
                list(pids),
            )
            .fetchone()
        )
        return {
            pid: PassageRecord(pid, doc_id, ordinal, start, end, text, title, metadata)
            for pid, doc_id, ordinal, start, end, text, title, metadata in json.loads(packed)
        }

    def document(
        self, sequence: int, doc_id: str
    ) -> tuple[StoredDocument, list[PassageRecord]] | None:
        """The document live at ``sequence`` with its passages, or None."""
        db = self._db()
        row = db.execute(
            """
            SELECT doc_key, title, text, metadata FROM documents
            WHERE doc_id = ?2 AND born_seq <= ?1 AND (dead_seq IS NULL OR dead_seq > ?1)
            """,
            (sequence, doc_id),
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

    def live_documents(
        self, sequence: int
    ) -> Iterator[tuple[StoredDocument, list[tuple[int, int, int]]]]:
        """Every document live at ``sequence`` in id order, with its passages' ``(pid, start,
        end)`` in order: what a replica's state digest covers."""
        rows = self._db().execute(
            """
            SELECT d.doc_id, d.title, d.text, d.metadata,
                   (SELECT json_group_array(json_array(p.pid, p.start, p.end))
                    FROM (SELECT pid, start, end FROM passages WHERE doc_key = d.doc_key
                          ORDER BY ordinal) p)
            FROM documents d
            WHERE d.born_seq <= ?1 AND (d.dead_seq IS NULL OR d.dead_seq > ?1)
            ORDER BY d.doc_id
            """,
            (sequence,),
        )
        for doc_id, title, text, metadata, passages in rows:
            spans = [(int(pid), int(start), int(end)) for pid, start, end in json.loads(passages)]
            yield StoredDocument(doc_id, text, title, json.loads(metadata)), spans

    def count_documents(self, sequence: int) -> int:
        (count,) = (
            self._db()
            .execute(
                "SELECT count(*) FROM documents "
                "WHERE born_seq <= ?1 AND (dead_seq IS NULL OR dead_seq > ?1)",
                (sequence,),
            )
            .fetchone()
        )
        return int(count)
