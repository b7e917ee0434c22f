"""A worker's replica against the writer's collection on the same files: it answers exactly
what the writer would while their states match, and hands every other moment to the writer."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from realm.errors import NotFound
from realm.retriever.collection import Collection
from realm.retriever.embedder import SentenceTransformerEncoder
from realm.retriever.live import View
from realm.retriever.published import WITHDRAWN, PublishedState
from realm.retriever.registry import Registry
from realm.retriever.replica import Replica, Replicas
from realm.retriever.search import SearchMode, SearchQuery
from realm.retriever.settings import CollectionSettings
from realm.retriever.store import StoredDocument
from tests.conftest import fixture_documents

QUERIES = ["tower in Paris", "plants use sunlight", "programming language design", "长城"]


def _documents() -> list[StoredDocument]:
    return [StoredDocument(d.id, d.text, d.title, dict(d.metadata)) for d in fixture_documents()]


def _refreshed(replicas: Replicas, name: str) -> tuple[Replica, View]:
    replicas.refresh()  # what the worker does every half second
    serving = replicas.serving(name)
    assert serving is not None, f"the replica of {name!r} does not match the writer"
    return serving


@pytest.fixture
def registry(tmp_path: Path, encoder: SentenceTransformerEncoder) -> Iterator[Registry]:
    registry = Registry(tmp_path, lambda _: encoder, max_collections=4)
    yield registry
    registry.close()


def _answers(searchable: Collection | Replica, mode: SearchMode) -> list[list[tuple[str, float]]]:
    return [
        [(h.passage.passage_id, h.score) for h in searchable.search(SearchQuery(q, 5, mode))]
        for q in QUERIES
    ]


def test_a_replica_answers_like_the_writer_only_while_nothing_changed(
    tmp_path: Path, registry: Registry, encoder: SentenceTransformerEncoder
) -> None:
    collection = registry.create("docs", CollectionSettings())
    collection.upsert(_documents())
    collection.compact()
    replicas = Replicas(tmp_path, lambda _: encoder)
    replica, view = _refreshed(replicas, "docs")
    for mode in ("bm25", "dense", "hybrid"):
        assert _answers(replica, mode) == _answers(collection, mode)
    assert view.generation.number == collection.generation

    # A write lives only in the writer's tail: the replica must not answer without it.
    collection.upsert([StoredDocument("new", "a glacier of fresh water in a valley", "New")])
    assert replicas.serving("docs") is None
    replicas.refresh()
    assert replicas.serving("docs") is None  # nothing to load: the write is in no generation

    # Once the writer folds it into a generation, the replica loads that one and serves again.
    collection.compact()
    replica, view = _refreshed(replicas, "docs")
    assert view.generation.number == collection.generation
    assert _answers(replica, "bm25") == _answers(collection, "bm25")
    assert replica.search(SearchQuery("glacier fresh water valley", 1, "bm25"))[
        0
    ].passage.doc_id == ("new")
    replicas.close()


def test_a_deleted_collection_is_never_served_again(
    tmp_path: Path, registry: Registry, encoder: SentenceTransformerEncoder
) -> None:
    collection = registry.create("gone", CollectionSettings())
    collection.upsert(_documents())
    collection.compact()
    replicas = Replicas(tmp_path, lambda _: encoder)
    _refreshed(replicas, "gone")
    registry.delete("gone")
    assert replicas.serving("gone") is None  # at once, before any refresh
    replicas.refresh()
    assert replicas.serving("gone") is None
    with pytest.raises(NotFound):
        registry.get("gone")

    # A new collection under the same name is a new directory, found again on demand.
    again = registry.create("gone", CollectionSettings())
    again.upsert(_documents()[:2])
    again.compact()
    _, view = _refreshed(replicas, "gone")
    assert view.passages == again.snapshot().passages
    replicas.close()


def test_a_collection_never_built_is_left_to_the_writer(
    tmp_path: Path, registry: Registry, encoder: SentenceTransformerEncoder
) -> None:
    """Generation 0 plus a tail is the writer's alone; the replica must not answer "empty"."""
    collection = registry.create("fresh", CollectionSettings())
    collection.upsert(_documents())
    replicas = Replicas(tmp_path, lambda _: encoder)
    replicas.refresh()
    assert replicas.serving("fresh") is None
    collection.compact()
    _refreshed(replicas, "fresh")
    replicas.close()


def test_a_torn_published_state_reads_as_unknown(tmp_path: Path) -> None:
    writer = PublishedState.for_writer(tmp_path)
    reader = PublishedState.for_reader(tmp_path)
    assert reader.read() is None  # nothing published yet: zeros fail the check word
    writer.publish(3, 41)
    assert reader.read() == (3, 41)
    with (tmp_path / "published").open("r+b") as file:  # a half-finished copy: new generation
        file.write((4).to_bytes(8, "little"))
    assert reader.read() is None
    writer.withdraw()
    assert reader.read() == (WITHDRAWN, 0)
    writer.close()
    reader.close()
