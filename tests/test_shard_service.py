"""The shard phases over gRPC: a coordinator in this process, shards on two real servers.

One server holds the whole corpus as one collection and half of it as a shard; a second
server, with a read worker sharing its port (a phase that reaches the worker is relayed to
the writer), holds the other half. The coordinator's answer over the two remote shards must be the
whole collection's own Search answer: the same scores and passages (ties aside).
"""

import asyncio
import random
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc import aio

from realm.client import Document, RetrieverClient
from realm.retriever.analyzer import Analyzer
from realm.retriever.bm25 import CorpusStatistics
from realm.retriever.embedder import SentenceTransformerEncoder
from realm.retriever.remote_shard import RemoteShard
from realm.retriever.search import Hit, Plan, SearchMode, SearchQuery, ShardRanking
from realm.retriever.settings import CollectionSettings
from realm.retriever.sharding import Coordinator, ShardDown, ShardedHits, shard_of
from realm.retriever.topk import FloatArray, IntArray
from realm.v1 import common_pb2, shard_pb2, shard_pb2_grpc
from tests.conftest import fixture_documents
from tests.servers import RetrieverProcess
from tests.test_live_index import QUERIES, WORDS
from tests.test_workers import wait_for_log

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
        # Health answers from the writer; a call may meet the worker while it still loads.
        wait_for_log(server, r"worker \d+ serving searches")
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
        remote = [
            [RemoteShard(t, shard_pb2_grpc.ShardServiceStub(c), PART, 30.0)]
            for t, c in zip(targets, channels, strict=True)
        ]
        try:
            answers = []
            for query in queries:
                answer = await coordinator.search(remote, query)
                answers.append([(h.passage.passage_id, h.score) for h in answer.hits])
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
                "statistics.document_frequencies",
                lambda: stub.ShardRank(
                    shard_pb2.ShardRankRequest(
                        collection=PART,
                        terms=["river"],
                        mode=common_pb2.SEARCH_MODE_BM25,
                        depth=10,
                        statistics=shard_pb2.TermStatistics(
                            passages=3, total_length=30, document_frequencies={"river": 9}
                        ),
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


class KilledAfterRanking:
    """A replica whose server is killed (SIGKILL) the moment it has ranked: it dies mid-query,
    holding the candidates the coordinator is about to hydrate."""

    def __init__(self, inner: RemoteShard, server: RetrieverProcess) -> None:
        self.inner = inner
        self.server = server
        self.killed = False

    async def statistics(self, tokens: list[str]) -> CorpusStatistics:
        return await self.inner.statistics(tokens)

    async def rank(
        self,
        plan: Plan,
        tokens: list[str],
        statistics: CorpusStatistics | None,
        vector: FloatArray | None,
    ) -> ShardRanking:
        ranking = await self.inner.rank(plan, tokens, statistics, vector)
        self.server.signal(signal.SIGKILL)
        self.server.wait()
        self.killed = True
        return ranking

    async def hydrate(self, handles: IntArray, scores: FloatArray) -> list[Hit]:
        return await self.inner.hydrate(handles, scores)


def test_a_shard_answers_while_a_replica_lives_and_is_named_when_none_does(
    retriever: RetrieverProcess,
    shards: list[str],
    encoder: SentenceTransformerEncoder,
    tmp_path: Path,
) -> None:
    held = [d for d in _corpus() if shard_of(d.id, 2) == 1]
    text = "river stone lamp"
    query = SearchQuery(text, 10, "hybrid")
    coordinator = Coordinator(Analyzer("en"), encoder, CollectionSettings(language="en").fusion)
    with (
        RetrieverProcess(tmp_path / "first" / "data") as first,
        RetrieverProcess(tmp_path / "second" / "data") as second,
    ):
        for server in (first, second):  # two replicas of shard 1
            with RetrieverClient(server.target, timeout=300) as client:
                client.create_collection(PART, language="en", embedding_backend="torch")
                client.upsert(PART, held)

        async def run() -> tuple[ShardedHits, ShardedHits, str, bool]:
            channels = {
                t: aio.insecure_channel(t) for t in (shards[0], first.target, second.target)
            }

            def replica(target: str) -> RemoteShard:
                stub = shard_pb2_grpc.ShardServiceStub(channels[target])
                return RemoteShard(target, stub, PART, 30.0)

            try:
                dying = KilledAfterRanking(replica(first.target), first)
                answer = await coordinator.search(
                    [[replica(shards[0])], [dying, replica(second.target)]], query
                )
                second.signal(signal.SIGKILL)
                second.wait()
                both_down = [[replica(shards[0])], [replica(first.target), replica(second.target)]]
                with pytest.raises(ShardDown) as down:
                    await coordinator.search(both_down, query)
                partial = await coordinator.search(both_down, query, allow_partial=True)
                return answer, partial, str(down.value), dying.killed
            finally:
                for channel in channels.values():
                    await channel.close(None)

        answer, partial, refusal, killed = asyncio.run(run())
    assert killed
    with RetrieverClient(retriever.target, timeout=120) as client:
        whole = [(h.passage_id, h.score) for h in client.search(WHOLE, text, k=11, mode="hybrid")]
    # The second replica answered for shard 1 after the first died mid-query.
    _assert_alike(whole, [(h.passage.passage_id, h.score) for h in answer.hits])
    assert answer.missing_shards == []
    assert "shard 1 is unavailable" in refusal
    assert partial.missing_shards == [1]
    assert partial.hits
    assert all(shard_of(h.passage.doc_id, 2) == 0 for h in partial.hits)
