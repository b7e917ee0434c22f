"""Property-based fuzzing of both services' gRPC APIs against real server processes.

Random requests within and beyond every limit, random strings and bytes for names and ids,
floats including NaN and the infinities, random stream shapes and undecodable messages. The
server must never crash or hang, never answer a client's mistake with INTERNAL, UNKNOWN or
UNAVAILABLE, keep health SERVING, and keep acknowledged data intact. CI runs a short form;
``make fuzz`` sets REALM_FUZZ_EXAMPLES for a long one.
"""

import os
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import grpc
import pytest
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from realm.client import Document, RetrieverClient
from realm.v1 import (
    common_pb2,
    generator_pb2,
    generator_pb2_grpc,
    retriever_pb2,
    retriever_pb2_grpc,
)
from tests.servers import GeneratorProcess, RetrieverProcess, health_status

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("REALM_FUZZ_EXAMPLES", "100"))
# What a client's request may get; anything else (INTERNAL, UNKNOWN, UNAVAILABLE, ...) is a bug.
CLIENT_OUTCOMES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
}
CANARY = "canary"  # holds one known document; never written by the fuzzer
TARGET = "fuzz"  # exists for the whole run, so writes get past the collection check
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,  # no example files left in the checkout
)

# Mostly plausible values, so that calls get past validation into the index, and some hostile.
names = st.one_of(
    st.just(TARGET),
    st.just(TARGET),
    st.sampled_from([CANARY, "fuzz-2", "nope"]),
    st.from_regex(r"[A-Za-z0-9_-]{1,70}", fullmatch=True),
    st.text(max_size=80),
    st.sampled_from(["abc\n", "..", "a/b", "", " ", "x" * 65]),
)
words = st.lists(
    st.sampled_from(["tower", "Paris", "iron", "river", "light", "data", "the", "铁塔", "de"]),
    min_size=1,
    max_size=40,
).map(" ".join)
texts = st.one_of(
    words, words, words, st.text(max_size=300), st.sampled_from(["", " ", "\x00", "a" * 5000])
)
ids = st.one_of(st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True), texts)
floats32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
uint32 = st.one_of(
    st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 8, 10, 1000, 1001]), st.integers(0, 50)
)
small_maps = st.dictionaries(st.text(max_size=70), st.text(max_size=70), max_size=4)


@st.composite
def collection_configs(draw: st.DrawFn) -> retriever_pb2.CollectionConfig:
    config = retriever_pb2.CollectionConfig(
        language=draw(st.sampled_from(["", "en", "zh", "none", "fr", "\x00"])),
        embedding_model=draw(st.sampled_from(["", "/etc", "someone/model", "all-MiniLM-L6-v2"])),
        chunk_words=draw(uint32),
        annoy_trees=draw(uint32),
    )
    if draw(st.booleans()):
        config.chunk_overlap = draw(uint32)
    if draw(st.booleans()):
        config.k1 = draw(floats32)
    if draw(st.booleans()):
        config.b = draw(floats32)
    return config


documents = st.builds(common_pb2.Document, id=texts, text=texts, title=texts, metadata=small_maps)
plausible_documents = st.builds(
    common_pb2.Document,
    id=st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True),
    text=words,
    title=st.one_of(st.just(""), words),
    metadata=st.dictionaries(st.sampled_from(["lang", "kind"]), st.sampled_from(["en", "x"])),
)
upsert_streams = st.one_of(
    # Well-formed streams into the fuzzed collection: these reach the index and the log.
    st.lists(
        st.builds(
            retriever_pb2.UpsertRequest,
            collection=st.just(TARGET),
            documents=st.lists(plausible_documents, max_size=4, unique_by=lambda d: d.id),
        ),
        min_size=1,
        max_size=2,
    ),
    st.lists(
        st.builds(
            retriever_pb2.UpsertRequest,
            collection=names,
            documents=st.lists(documents, max_size=4),
        ),
        max_size=3,
    ),
)


@st.composite
def search_requests(draw: st.DrawFn) -> retriever_pb2.SearchRequest:
    request = retriever_pb2.SearchRequest(
        collection=draw(names),
        query=draw(texts),
        k=draw(uint32),
        mode=cast(common_pb2.SearchMode.ValueType, draw(st.integers(0, 4))),  # 4: undefined
        fusion=cast(common_pb2.FusionMethod.ValueType, draw(st.integers(0, 3))),
        filter=draw(st.one_of(st.just({}), st.just({}), small_maps)),
    )
    if draw(st.booleans()):
        request.dense_weight = draw(floats32)
    return request


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RetrieverProcess]:
    """A retriever of its own (the fuzzer deletes collections) holding a canary collection."""
    with RetrieverProcess(tmp_path_factory.mktemp("fuzz") / "data") as server:
        with RetrieverClient(server.target) as client:
            client.create_collection(CANARY)
            client.upsert(CANARY, [Document("eiffel", "The Eiffel Tower is in Paris.")])
            client.create_collection(TARGET)
        yield server
        _assert_intact(server)


@pytest.fixture(scope="module")
def stub(fuzzed: RetrieverProcess) -> Iterator[retriever_pb2_grpc.RetrieverServiceStub]:
    with grpc.insecure_channel(fuzzed.target) as channel:
        yield retriever_pb2_grpc.RetrieverServiceStub(channel)


def _outcome(call: object, *args: object) -> grpc.StatusCode:
    code, details = grpc.StatusCode.OK, ""
    try:
        call(*args, timeout=60)  # type: ignore[operator]
    except grpc.RpcError as error:
        code, details = error.code(), error.details() or ""
    assert code in CLIENT_OUTCOMES, f"{code.name}: {details}"
    return code


def _assert_intact(server: RetrieverProcess) -> None:
    assert server.process is not None
    assert server.process.poll() is None, server.log()[-2000:]
    assert health_status(server.target, timeout=10) == health_pb2.HealthCheckResponse.SERVING
    with RetrieverClient(server.target) as client:
        hits = client.search(CANARY, "Eiffel Tower Paris", mode="bm25", k=1)
    assert [hit.doc_id for hit in hits] == ["eiffel"]


def _may_delete(name: str) -> bool:
    return name not in (CANARY, TARGET)


@FUZZ_SETTINGS
@given(name=names, config=collection_configs(), delete=st.booleans())
def test_collections(
    stub: retriever_pb2_grpc.RetrieverServiceStub,
    name: str,
    config: retriever_pb2.CollectionConfig,
    delete: bool,
) -> None:
    request = retriever_pb2.CreateCollectionRequest(name=name, config=config)
    created = _outcome(stub.CreateCollection, request) is grpc.StatusCode.OK
    if created or (delete and _may_delete(name)):
        _outcome(stub.DeleteCollection, retriever_pb2.DeleteCollectionRequest(name=name))


@FUZZ_SETTINGS
@given(stream=upsert_streams)
def test_upsert_streams(
    stub: retriever_pb2_grpc.RetrieverServiceStub, stream: list[retriever_pb2.UpsertRequest]
) -> None:
    for message in stream:
        if message.collection == CANARY:
            message.collection = TARGET  # keep the canary's contents known
    _outcome(stub.Upsert, iter(stream))
    if stream and stream[0].collection == TARGET and len(stream) == 1:
        _outcome(stub.Compact, retriever_pb2.CompactRequest(collection=TARGET))


@FUZZ_SETTINGS
@given(request=search_requests())
def test_searches(
    stub: retriever_pb2_grpc.RetrieverServiceStub, request: retriever_pb2.SearchRequest
) -> None:
    _outcome(stub.Search, request)


@FUZZ_SETTINGS
@given(requests=st.lists(search_requests(), max_size=3))
def test_batch_searches(
    stub: retriever_pb2_grpc.RetrieverServiceStub, requests: list[retriever_pb2.SearchRequest]
) -> None:
    _outcome(stub.BatchSearch, retriever_pb2.BatchSearchRequest(requests=requests))


@FUZZ_SETTINGS
@given(collection=names, doomed=st.lists(ids, max_size=5), one=ids)
def test_reads_and_deletes_by_id(
    stub: retriever_pb2_grpc.RetrieverServiceStub, collection: str, doomed: list[str], one: str
) -> None:
    _outcome(stub.GetDocument, retriever_pb2.GetDocumentRequest(collection=collection, id=one))
    if collection != CANARY:
        _outcome(stub.Delete, retriever_pb2.DeleteRequest(collection=collection, ids=doomed))
    _outcome(stub.Stats, retriever_pb2.StatsRequest(collection=collection))


@FUZZ_SETTINGS
@given(
    method=st.sampled_from(
        ["CreateCollection", "Search", "BatchSearch", "GetDocument", "Stats", "Compact"]
    ),
    payload=st.binary(max_size=200),
)
def test_arbitrary_bytes_as_requests(fuzzed: RetrieverProcess, method: str, payload: bytes) -> None:
    """Whatever arrives on the wire: parsed, refused, or (when it happens to parse) answered."""
    with grpc.insecure_channel(fuzzed.target) as channel:
        path = f"/realm.v1.RetrieverService/{method}"
        _outcome(channel.unary_unary(path, None, None), payload)
        _outcome(
            channel.stream_unary("/realm.v1.RetrieverService/Upsert", None, None), iter([payload])
        )


@st.composite
def generate_requests(draw: st.DrawFn) -> generator_pb2.GenerateRequest:
    """Questions over the shared answer collection; answers are kept to a few tokens."""
    parameters = generator_pb2.GenerationParameters(
        max_new_tokens=draw(st.sampled_from([1, 2, 3, 1025, 2**32 - 1])),
        stop=draw(st.lists(st.text(max_size=70), max_size=5)),
    )
    if draw(st.booleans()):
        parameters.temperature = draw(floats32)
    if draw(st.booleans()):
        parameters.top_p = draw(floats32)
    if draw(st.booleans()):
        parameters.seed = draw(st.integers(0, 2**64 - 1))
    task = cast(generator_pb2.Task.ValueType, draw(st.integers(0, 4)))  # 4: undefined
    return generator_pb2.GenerateRequest(
        question=draw(st.one_of(words, texts, st.just("x" * 2001))),
        collection=draw(st.one_of(st.just("answers"), names)),
        mode=cast(common_pb2.SearchMode.ValueType, draw(st.integers(0, 4))),
        k=draw(uint32),
        parameters=parameters,
        allow_no_context=draw(st.booleans()),
        task=task,
        fields=draw(st.lists(st.one_of(st.sampled_from(["city", "year"]), texts), max_size=3)),
        filter=draw(st.one_of(st.just({}), small_maps)),
    )


plausible_generate_requests = st.builds(
    generator_pb2.GenerateRequest,
    question=words,
    collection=st.just("answers"),
    mode=st.sampled_from([0, 1, 2, 3]),
    k=st.integers(0, 5),
    parameters=st.builds(generator_pb2.GenerationParameters, max_new_tokens=st.integers(1, 3)),
    task=st.sampled_from([0, 1, 2]),
)


@settings(FUZZ_SETTINGS, max_examples=max(EXAMPLES // 2, 1))
@given(request=st.one_of(plausible_generate_requests, generate_requests()))
def test_generation_requests(
    generator: GeneratorProcess, answer_collection: str, request: generator_pb2.GenerateRequest
) -> None:
    """The generator's API, unary and streamed, against the shared generator process."""
    with grpc.insecure_channel(generator.target) as channel:
        stub = generator_pb2_grpc.GeneratorServiceStub(channel)
        _outcome(stub.Generate, request)
        _outcome(
            lambda message, timeout: list(stub.GenerateStream(message, timeout=timeout)), request
        )
    assert health_status(generator.target, timeout=10) == health_pb2.HealthCheckResponse.SERVING


def test_the_server_survived_the_fuzzing(fuzzed: RetrieverProcess, tmp_path: Path) -> None:
    """Runs last in this module: the invariants after everything above."""
    _assert_intact(fuzzed)
    assert "Traceback" not in fuzzed.log(), fuzzed.log()[-3000:]
