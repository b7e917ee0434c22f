"""The shard phases over gRPC: a coordinator in this process, shards on two real servers.

One server holds the whole corpus as one collection and half of it as a shard; a second
server, with a read worker sharing its port (a phase that reaches the worker is relayed to
the writer), holds the other half. The coordinator's answer over the two remote shards must be the
whole collection's own Search answer: the same scores and passages (ties aside).
"""

import asyncio
import random
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
from grpc import aio

from realm.client import Document, RetrieverClient
from realm.retriever.analyzer import Analyzer
from realm.retriever.embedder import SentenceTransformerEncoder
from realm.retriever.remote_shard import RemoteShard
from realm.retriever.search import SearchMode, SearchQuery
from realm.retriever.settings import CollectionSettings
from realm.retriever.sharding import Coordinator, shard_of
from realm.v1 import common_pb2, shard_pb2, shard_pb2_grpc
from tests.conftest import fixture_documents
from tests.servers import RetrieverProcess
from tests.test_live_index import QUERIES, WORDS

WHOLE, PART = "sharded-whole", "sharded-part"
TOLERANCE = 1e-5  # two processes encode the query: torch may round the last bits apart


def _corpus() -> list[Document]:
    rng = random.Random(7)
    weights = [1 / (rank + 1) for rank in range(len(WORDS))]
    made = [
        Document(f"r{i}", " ".join(rng.choices(WORDS, weights, k=rng.randint(5, 80))), f"R{i}")
        for i in range(120)
    ]
    return [*fixture_documents(), *made]


@pytest.fixture(scope="module")
def second_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RetrieverProcess]:
    data_dir = tmp_path_factory.mktemp("shard-service") / "data"
    with RetrieverProcess(data_dir, "--workers", "2") as server:
        yield server


@pytest.fixture(scope="module")
def shards(retriever: RetrieverProcess, second_server: RetrieverProcess) -> list[str]:
    """The corpus whole on the shared server, and split over both servers; their targets."""
    documents = _corpus()
    targets = [retriever.target, second_server.target]
    with RetrieverClient(retriever.target, timeout=300) as whole:
        whole.create_collection(WHOLE, language="en", embedding_backend="torch")
        whole.upsert(WHOLE, documents)
    for index, target in enumerate(targets):
        with RetrieverClient(target, timeout=300) as client:
            client.create_collection(PART, language="en", embedding_backend="torch")
            client.upsert(PART, [d for d in documents if shard_of(d.id, 2) == index])
    return targets


def _coordinated(
    targets: list[str], encoder: SentenceTransformerEncoder, queries: list[SearchQuery]
) -> list[list[tuple[str, float]]]:
    async def run() -> list[list[tuple[str, float]]]:
        coordinator = Coordinator(Analyzer("en"), encoder, CollectionSettings(language="en").fusion)
        channels = [aio.insecure_channel(t) for t in targets]
        remote = [RemoteShard(shard_pb2_grpc.ShardServiceStub(c), PART, 30.0) for c in channels]
        try:
            answers = []
            for query in queries:
                hits = await coordinator.search(remote, query)
                answers.append([(h.passage.passage_id, h.score) for h in hits])
            return answers
        finally:
            for channel in channels:
                await channel.close(None)

    return asyncio.run(run())


def _assert_alike(expected: list[tuple[str, float]], got: list[tuple[str, float]]) -> None:
    """``got`` is ``expected`` but for its last entry (one past the cut, for ties across it):
    the same scores, the same passage wherever its score is not tied."""
    assert len(expected) - len(got) in (0, 1)
    np.testing.assert_allclose(
        [s for _, s in got], [s for _, s in expected[: len(got)]], rtol=0, atol=TOLERANCE
    )
    scores = np.asarray([s for _, s in expected])
    for (want, score), (have, _) in zip(expected, got, strict=False):
        tied = np.count_nonzero(np.abs(scores - score) <= TOLERANCE) > 1
        assert have == want or tied, f"{have} where the whole collection has {want}"


@pytest.mark.parametrize("mode", ["bm25", "dense", "hybrid"])
def test_remote_shards_answer_as_the_whole_collection_does(
    retriever: RetrieverProcess,
    shards: list[str],
    encoder: SentenceTransformerEncoder,
    mode: SearchMode,
) -> None:
    texts = [*QUERIES, "iron tower in Paris", "remote procedure calls", "coffee"]
    k = 30 if mode == "bm25" else 10
    got = _coordinated(shards, encoder, [SearchQuery(t, k, mode) for t in texts])
    with RetrieverClient(retriever.target, timeout=120) as client:
        for text, answer in zip(texts, got, strict=True):
            # One more than k: a tie across the cut may send another passage of it.
            hits = client.search(WHOLE, text, k=k + 1, mode=mode)
            whole = [(h.passage_id, h.score) for h in hits]
            assert answer, text
            _assert_alike(whole, answer)


def test_bad_shard_requests_are_refused_naming_the_field(shards: list[str]) -> None:
    with grpc.insecure_channel(shards[1]) as channel:
        stub = shard_pb2_grpc.ShardServiceStub(channel)
        cases: list[tuple[str, Callable[[], object]]] = [
            (
                "vector",
                lambda: stub.ShardRank(
                    shard_pb2.ShardRankRequest(
                        collection=PART,
                        terms=["river"],
                        mode=common_pb2.SEARCH_MODE_DENSE,
                        depth=10,
                        vector=[0.1, 0.2],
                    )
                ),
            ),
            (
                "mode",
                lambda: stub.ShardRank(
                    shard_pb2.ShardRankRequest(collection=PART, terms=["river"], depth=10)
                ),
            ),
            (
                "depth",
                lambda: stub.ShardRank(
                    shard_pb2.ShardRankRequest(
                        collection=PART,
                        terms=["river"],
                        mode=common_pb2.SEARCH_MODE_BM25,
                        depth=10**6,
                    )
                ),
            ),
            (
                "scores",
                lambda: stub.ShardHydrate(
                    shard_pb2.ShardHydrateRequest(collection=PART, passage_ids=[1, 2], scores=[1])
                ),
            ),
            (
                "terms",
                lambda: stub.ShardStatistics(
                    shard_pb2.ShardStatisticsRequest(collection=PART, terms=["river", ""])
                ),
            ),
        ]
        for field, call in cases:
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, field
            assert field in (refused.value.details() or ""), refused.value.details()
        with pytest.raises(grpc.RpcError) as missing:
            stub.ShardStatistics(shard_pb2.ShardStatisticsRequest(collection="nope", terms=["x"]))
        assert missing.value.code() is grpc.StatusCode.NOT_FOUND


def test_a_shard_s_statistics_are_its_own_and_add_up_over_the_servers(shards: list[str]) -> None:
    terms = Analyzer("en").tokens("river stone lamp river")
    totals = {"passages": 0, "river": 0}
    for target in shards:
        with grpc.insecure_channel(target) as channel:
            response = shard_pb2_grpc.ShardServiceStub(channel).ShardStatistics(
                shard_pb2.ShardStatisticsRequest(collection=PART, terms=terms)
            )
        totals["passages"] += response.statistics.passages
        totals["river"] += response.statistics.document_frequencies["river"]
        assert response.sequence > 0
    with grpc.insecure_channel(shards[0]) as channel:
        whole = shard_pb2_grpc.ShardServiceStub(channel).ShardStatistics(
            shard_pb2.ShardStatisticsRequest(collection=WHOLE, terms=terms)
        )
    assert totals == {
        "passages": whole.statistics.passages,
        "river": whole.statistics.document_frequencies["river"],
    }
