"""Every RPC through the real client stubs against a real server process on loopback."""

from collections.abc import Callable, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from realm.client import AlreadyExists, Document, Mode, NotFound, RetrieverClient
from realm.v1 import common_pb2, retriever_pb2, retriever_pb2_grpc
from tests.conftest import fixture_documents
from tests.servers import RetrieverProcess, health_status


@pytest.fixture
def stub(retriever: RetrieverProcess) -> Iterator[retriever_pb2_grpc.RetrieverServiceStub]:
    with grpc.insecure_channel(retriever.target) as channel:
        yield retriever_pb2_grpc.RetrieverServiceStub(channel)


def test_health_is_serving_and_reflection_lists_the_service(retriever: RetrieverProcess) -> None:
    assert health_status(retriever.target) == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(retriever.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert "realm.v1.RetrieverService" in names


def test_collection_lifecycle(client: RetrieverClient, collection_name: str) -> None:
    info = client.create_collection(collection_name, language="zh", chunk_words=64)
    assert (info.name, info.language, info.documents) == (collection_name, "zh", 0)
    assert collection_name in [c.name for c in client.list_collections()]
    with pytest.raises(AlreadyExists, match=collection_name):
        client.create_collection(collection_name)
    client.upsert(collection_name, fixture_documents()[:3])
    assert client.delete_collection(collection_name) == 3
    assert collection_name not in [c.name for c in client.list_collections()]
    with pytest.raises(NotFound):
        client.search(collection_name, "tower")


def test_upsert_search_get_delete_and_stats(
    client: RetrieverClient, fixture_collection: str
) -> None:
    documents = fixture_documents()
    stats = client.stats(fixture_collection)[0]
    assert (stats.documents, stats.passages, stats.generation) == (len(documents), 12, 0)
    assert (stats.tail_passages, stats.last_sequence) == (12, 1)  # written, not yet built
    assert stats.wal_bytes > 0
    assert client.compact(fixture_collection) == 1
    stats = client.stats(fixture_collection)[0]
    assert (stats.generation, stats.tail_passages, stats.tombstones) == (1, 0, 0)
    assert stats.vocabulary > 50
    assert stats.index_bytes > 0

    modes: tuple[Mode, ...] = ("bm25", "dense", "hybrid")
    for mode in modes:
        hits = client.search(fixture_collection, "Gustave Eiffel iron tower", k=3, mode=mode)
        assert hits[0].doc_id == "eiffel"
        assert hits[0].passage_id == "eiffel#0"
        assert hits[0].metadata == {"lang": "en", "topic": "landmark"}
        assert (hits[0].title, hits[0].start) == ("Eiffel Tower", 0)
        assert hits[0].text.startswith("The Eiffel Tower is a wrought-iron")
        assert hits[0].score > 0

    document = client.get(fixture_collection, "zh-greatwall")
    assert document.title == "长城"
    hit = client.search(fixture_collection, "长城 山海关", k=1, mode="bm25")[0]
    assert hit.doc_id == "zh-greatwall"
    assert document.text[hit.start : hit.end] == hit.text

    summary = client.upsert(
        fixture_collection,
        [
            Document("eiffel", "The tower was repainted in 2024.", "Eiffel Tower"),
            Document("new", "Lighthouses guide ships."),
        ],
    )
    assert (summary.inserted, summary.replaced, summary.generation) == (1, 1, 1)
    assert summary.sequence == 2
    assert client.get(fixture_collection, "eiffel").text == "The tower was repainted in 2024."
    assert client.search(fixture_collection, "repainted", k=1)[0].doc_id == "eiffel"  # at once
    stats = client.stats(fixture_collection)[0]
    assert (stats.tail_passages, stats.tombstones, stats.last_sequence) == (2, 1, 2)

    deleted, missing = client.delete(fixture_collection, ["new", "ghost"])
    assert (deleted, missing) == (1, ["ghost"])
    with pytest.raises(NotFound, match="new"):
        client.get(fixture_collection, "new")
    assert client.stats(fixture_collection)[0].documents == len(documents)


def test_filters_and_fusion_options(client: RetrieverClient, fixture_collection: str) -> None:
    hits = client.search(fixture_collection, "tower", k=5, filter={"topic": "food"})
    assert {h.doc_id for h in hits} <= {"coffee", "zh-tea"}
    rrf = client.search(fixture_collection, "caffeine drink", k=2, fusion="rrf", dense_weight=0.5)
    weighted = client.search(
        fixture_collection, "caffeine drink", k=2, fusion="weighted", dense_weight=1.0
    )
    assert {h.doc_id for h in rrf} == {h.doc_id for h in weighted} == {"coffee", "zh-tea"}


def test_batch_search_answers_in_request_order(
    client: RetrieverClient, fixture_collection: str
) -> None:
    queries = ["volcano lava", "python programming language", "green tea"]
    results = client.batch_search(fixture_collection, queries, k=1)
    assert [r[0].doc_id for r in results] == ["volcano", "python", "zh-tea"]


def _status(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    error: grpc.Call = raised.value  # type: ignore[assignment]  # RpcErrors raised by calls are Calls
    return error.code(), error.details() or ""


# Enum values this server does not know, as a newer client could send them.
UNKNOWN_MODE = common_pb2.SearchMode.ValueType(9)
UNKNOWN_FUSION = common_pb2.FusionMethod.ValueType(5)


def _upsert(
    stub: retriever_pb2_grpc.RetrieverServiceStub, *messages: retriever_pb2.UpsertRequest
) -> Callable[[], object]:
    return lambda: stub.Upsert(iter(messages), timeout=30)


def _doc(doc_id: str, text: str = "some text") -> common_pb2.Document:
    return common_pb2.Document(id=doc_id, text=text)


def test_bad_input_gets_a_clear_status_and_loses_nothing(
    stub: retriever_pb2_grpc.RetrieverServiceStub, client: RetrieverClient, fixture_collection: str
) -> None:
    c = fixture_collection
    before = client.stats(c)[0]
    cases: list[tuple[Callable[[], object], grpc.StatusCode, str]] = [
        (
            lambda: stub.Search(retriever_pb2.SearchRequest(collection=c, query="")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "query is empty",
        ),
        (
            lambda: stub.Search(retriever_pb2.SearchRequest(collection=c, query=" \t\n")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "query is empty",
        ),
        (
            lambda: stub.Search(retriever_pb2.SearchRequest(collection=c, query="x", k=1001)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "k=1001 is outside 1..max_k=1000",
        ),
        (
            lambda: stub.Search(retriever_pb2.SearchRequest(collection=c, query="x" * 5000)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "max_query_chars=4096",
        ),
        (
            lambda: stub.Search(retriever_pb2.SearchRequest(collection="nope", query="x")),
            grpc.StatusCode.NOT_FOUND,
            "collection 'nope' does not exist",
        ),
        (
            lambda: stub.Search(
                retriever_pb2.SearchRequest(collection=c, query="x", mode=UNKNOWN_MODE)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "mode=9 is unknown",
        ),
        (
            lambda: stub.Search(
                retriever_pb2.SearchRequest(collection=c, query="x", fusion=UNKNOWN_FUSION)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "fusion=5 is unknown",
        ),
        (
            lambda: stub.Search(
                retriever_pb2.SearchRequest(collection=c, query="x", dense_weight=1.5)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "dense_weight=1.5",
        ),
        (
            lambda: stub.Search(retriever_pb2.SearchRequest(collection="bad name!", query="x")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "not a valid collection name",
        ),
        (
            lambda: stub.BatchSearch(retriever_pb2.BatchSearchRequest()),
            grpc.StatusCode.INVALID_ARGUMENT,
            "requests is empty",
        ),
        (
            lambda: stub.BatchSearch(
                retriever_pb2.BatchSearchRequest(
                    requests=[
                        retriever_pb2.SearchRequest(collection=c, query="ok"),
                        retriever_pb2.SearchRequest(collection=c, query=""),
                    ]
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "requests[1].query is empty",
        ),
        (
            _upsert(
                stub, retriever_pb2.UpsertRequest(collection=c, documents=[_doc("a"), _doc("a")])
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "documents[1].id='a' repeats",
        ),
        (
            _upsert(stub, retriever_pb2.UpsertRequest(collection=c, documents=[_doc("a", "  ")])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "documents[0].text is empty (id='a')",
        ),
        (
            _upsert(
                stub, retriever_pb2.UpsertRequest(collection=c, documents=[_doc("a", "x\x00y")])
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "documents[0].text contains a NUL character at offset 1 (id='a')",
        ),
        (
            _upsert(stub, retriever_pb2.UpsertRequest(collection=c, documents=[_doc("")])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "documents[0].id is empty",
        ),
        (
            _upsert(
                stub,
                retriever_pb2.UpsertRequest(collection=c, documents=[_doc("big", "x " * 600_000)]),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "max_document_chars=1000000",
        ),
        (
            _upsert(
                stub,
                retriever_pb2.UpsertRequest(collection=c, documents=[_doc("a")]),
                retriever_pb2.UpsertRequest(collection=c, documents=[_doc("a")]),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "already sent earlier in this stream",
        ),
        (
            _upsert(
                stub,
                retriever_pb2.UpsertRequest(collection=c, documents=[_doc("a")]),
                retriever_pb2.UpsertRequest(collection="other", documents=[_doc("b")]),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "differs from",
        ),
        (
            _upsert(stub, retriever_pb2.UpsertRequest(collection="nope", documents=[_doc("a")])),
            grpc.StatusCode.NOT_FOUND,
            "'nope' does not exist",
        ),
        (_upsert(stub), grpc.StatusCode.INVALID_ARGUMENT, "stream was empty"),
        (
            lambda: stub.Delete(retriever_pb2.DeleteRequest(collection=c)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "ids is empty",
        ),
        (
            lambda: stub.GetDocument(retriever_pb2.GetDocumentRequest(collection=c, id="ghost")),
            grpc.StatusCode.NOT_FOUND,
            "id='ghost'",
        ),
        (
            lambda: stub.CreateCollection(
                retriever_pb2.CreateCollectionRequest(
                    name="x", config=retriever_pb2.CollectionConfig(language="de")
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "language='de'",
        ),
        (
            lambda: stub.CreateCollection(
                retriever_pb2.CreateCollectionRequest(
                    name="x",
                    config=retriever_pb2.CollectionConfig(chunk_words=16, chunk_overlap=16),
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "chunk_overlap=16",
        ),
        (
            lambda: stub.Stats(retriever_pb2.StatsRequest(collection="nope")),
            grpc.StatusCode.NOT_FOUND,
            "'nope'",
        ),
    ]
    for call, code, fragment in cases:
        actual_code, message = _status(call)
        assert (actual_code, fragment in message) == (code, True), message
    after = client.stats(c)[0]
    assert (after.documents, after.generation) == (before.documents, before.generation)
    assert client.search(c, "Gustave Eiffel iron tower", k=1)[0].doc_id == "eiffel"
    assert "x" not in [info.name for info in client.list_collections()]


def test_message_size_limit_is_enforced_by_the_transport(retriever: RetrieverProcess) -> None:
    with grpc.insecure_channel(
        retriever.target, options=[("grpc.max_send_message_length", 200 << 20)]
    ) as channel:
        stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
        code, _ = _status(
            lambda: stub.Search(retriever_pb2.SearchRequest(collection="c", query="x" * (65 << 20)))
        )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_read_waits_for_min_sequence_then_fails_clearly(
    client: RetrieverClient, fixture_collection: str, retriever: RetrieverProcess
) -> None:
    """Read-your-writes on one node: what was written is there at once; a sequence from the
    future (another cluster, a stale token) is UNAVAILABLE within the deadline, not a hang."""
    written = client.stats(fixture_collection)[0].last_sequence
    with grpc.insecure_channel(retriever.target) as channel:
        stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
        for consistency in (retriever_pb2.CONSISTENCY_SESSION, retriever_pb2.CONSISTENCY_STRONG):
            request = retriever_pb2.SearchRequest(
                collection=fixture_collection,
                query="photosynthesis",
                min_sequence=written,
                consistency=consistency,
            )
            assert stub.Search(request, timeout=10).sequence == written
        ahead = retriever_pb2.SearchRequest(
            collection=fixture_collection, query="photosynthesis", min_sequence=written + 5
        )
        with pytest.raises(grpc.RpcError) as waited:
            stub.Search(ahead, timeout=1.5)
        assert waited.value.code() == grpc.StatusCode.UNAVAILABLE
        assert f"min_sequence={written + 5}" in (waited.value.details() or "")
        ahead.consistency = retriever_pb2.CONSISTENCY_EVENTUAL
        assert stub.Search(ahead, timeout=10).sequence == written
