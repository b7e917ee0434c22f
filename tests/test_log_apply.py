"""What a cluster replica does to a collection, in-process: records applied in log order, the
state digest that proves two replicas equal, and writes split to fit the log's message size."""

from pathlib import Path

import pytest

from realm.errors import InvalidArgument
from realm.retriever import log_records
from realm.retriever.collection import (
    Collection,
    DeleteResult,
    SequenceGap,
    UpsertResult,
)
from realm.retriever.embedder import SentenceTransformerEncoder
from realm.retriever.search import SearchQuery
from realm.retriever.settings import CollectionSettings
from realm.retriever.store import StoredDocument


def _collection(directory: Path, encoder: SentenceTransformerEncoder) -> Collection:
    return Collection.create(
        "replica", directory, CollectionSettings(), lambda _: encoder, compact_threshold=10_000
    )


def _documents(first: int, count: int) -> list[StoredDocument]:
    return [
        StoredDocument(f"d{i}", f"Passage {i} is about wing number {i} and drag.", f"T{i}")
        for i in range(first, first + count)
    ]


def _records(source: Collection) -> list[bytes]:
    """The writes of a little history as log records (upserts, a replace, deletes)."""
    records = [
        log_records.encode_upsert(p.analysed.documents, p.vectors)
        for p in (source.prepare(_documents(0, 8)), source.prepare(_documents(5, 6)))
    ]
    records.append(log_records.encode_delete(["d1", "absent"]))
    records.append(log_records.encode_delete(["absent-too"]))  # finds nothing: still a record
    return records


def test_records_apply_in_order_once_and_a_gap_is_refused(
    tmp_path: Path, encoder: SentenceTransformerEncoder
) -> None:
    replica = _collection(tmp_path / "a", encoder)
    records = _records(replica)
    results = [replica.apply(sequence, r) for sequence, r in enumerate(records, start=1)]
    assert results[0] == UpsertResult(8, 0, 8, 0, 1)
    assert results[1] == UpsertResult(3, 3, 6, 0, 2)
    assert results[2] == DeleteResult(1, ["absent"], 3)
    assert results[3] == DeleteResult(0, ["absent-too"], 4)
    assert replica.snapshot().sequence == 4, "a delete that found nothing still takes its number"
    assert replica.apply(2, records[1]) is None, "a record applied already is skipped"
    with pytest.raises(SequenceGap, match="trimmed"):
        replica.apply(6, records[0])
    assert replica.snapshot().documents == 10
    replica.close()
    reopened = Collection.open(tmp_path / "a", lambda _: encoder)
    assert reopened.snapshot().sequence == 4, "applied records are in the local log"
    assert reopened.snapshot().documents == 10
    reopened.close()


def test_the_digest_is_equal_for_equal_content_whatever_the_generations(
    tmp_path: Path, encoder: SentenceTransformerEncoder
) -> None:
    first = _collection(tmp_path / "first", encoder)
    second = _collection(tmp_path / "second", encoder)
    records = _records(first)
    for sequence, record in enumerate(records, start=1):
        first.apply(sequence, record)
        second.apply(sequence, record)
        if sequence == 2:
            second.compact()  # the same content, folded into a generation on one side only
    assert second.generation == 1
    assert first.generation == 0
    assert first.state_digest() == second.state_digest()
    query = SearchQuery("wing drag", 5, "hybrid")
    assert [h.passage.doc_id for h in first.search(query)] == [
        h.passage.doc_id for h in second.search(query)
    ]
    second.apply(5, log_records.encode_delete(["d2"]))
    assert first.state_digest() != second.state_digest()
    first.close()
    second.close()


def test_a_large_write_is_split_into_records_of_whole_documents(
    tmp_path: Path, encoder: SentenceTransformerEncoder
) -> None:
    collection = _collection(tmp_path / "c", encoder)
    prepared = collection.prepare(_documents(0, 12))
    whole = prepared.records(1 << 20)
    assert len(whole) == 1
    parts = prepared.records(len(whole[0]) // 3)
    assert len(parts) >= 3
    assert all(len(part) <= len(whole[0]) // 3 for part in parts)
    decoded = [log_records.decode(part) for part in parts]
    ids = [d.doc_id for record in decoded for d in record.documents]  # type: ignore[union-attr]
    assert ids == [f"d{i}" for i in range(12)]
    for sequence, part in enumerate(parts, start=1):
        collection.apply(sequence, part)
    single = _collection(tmp_path / "single", encoder)
    single.apply(1, whole[0])
    assert collection.state_digest() == single.state_digest()
    with pytest.raises(InvalidArgument, match="max_payload"):
        prepared.records(200)
    collection.close()
    single.close()
