"""Sharded collections for real: one ``nats-server`` and four retriever replicas on loopback,
two holding shards 0 and 1 and two holding shards 2 and 3, so a collection of 2 shards has two
replicas of each shard (and two replicas that hold none of it) and one of 4 shards has two
replicas of each.

Any replica takes writes and coordinates searches. A sharded collection must answer as one
single-node index fed the same documents does (BM25 scores to 1e-6, the same top 10, the same
evaluation figures), a client must read its own writes across shards whichever replica it
calls, a killed replica of a shard must be replaced by the other, and a shard with no replica
left must fail the search by name or be reported missing, never be dropped silently. The
replicas require a bearer token, so every call between them must carry it too.
"""

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from bench.nats_cluster import NatsCluster
from realm.app.beir import read_corpus, read_queries
from realm.app.evaluation import evaluate_retrieval
from realm.client import (
    ConnectionOptions,
    Document,
    FailedPrecondition,
    InvalidArgument,
    Mode,
    NotFound,
    RetrieverClient,
    Unavailable,
)
from realm.retriever.sharding import shard_of
from realm.v1 import retriever_pb2, retriever_pb2_grpc
from tests.conftest import FIXTURES
from tests.servers import RetrieverProcess
from tests.test_cli import realm
from tests.test_cluster import aircraft_documents
from tests.test_sharding import Ranked, assert_ranked_alike

pytestmark = pytest.mark.timeout(900)
# Which shards each replica holds: two replicas of every shard of a 2- or 4-shard collection.
HOLDINGS = ("0,1", "2,3", "0,1", "2,3")
TOKEN = "sharded-cluster-test-token"  # noqa: S105 -- a test's own secret
AUTHORIZED = (("authorization", f"Bearer {TOKEN}"),)


class ShardedCluster:
    def __init__(self, nats: NatsCluster, replicas: list[RetrieverProcess]) -> None:
        self.nats = nats
        self.replicas = replicas

    def client(self, *replicas: int) -> RetrieverClient:
        """A client of the given replicas (all by default), round robin."""
        chosen = replicas or tuple(range(len(self.replicas)))
        options = ConnectionOptions(bearer_token=TOKEN)
        return RetrieverClient(
            [self.replicas[i].target for i in chosen], timeout=60, options=options
        )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShardedCluster]:
    root = tmp_path_factory.mktemp("sharded")
    with NatsCluster(root, 1) as nats:
        replicas = [
            RetrieverProcess(
                root / f"replica-{i}" / "data",
                "--nats",
                nats.urls,
                "--nats-replicas",
                "1",
                "--serve-shards",
                holding,
                env={"REALM_TOKEN": TOKEN},
            )
            for i, holding in enumerate(HOLDINGS)
        ]
        for replica in replicas:
            replica.start()
        try:
            for replica in replicas:
                replica.wait_serving()
            yield ShardedCluster(nats, replicas)
        finally:
            for replica in replicas:
                replica.stop()


def _ranked(hits: list) -> Ranked:  # type: ignore[type-arg]
    return [(hit.passage_id, hit.score) for hit in hits]


@pytest.mark.slow
def test_cranfield_over_2_and_4_shards_scores_and_ranks_as_one_index(
    cluster: ShardedCluster, retriever: RetrieverProcess, cranfield: Path
) -> None:
    documents = [  # a few Cranfield documents have no text, which a write refuses
        Document(d.doc_id, d.text, d.title)
        for d in read_corpus(cranfield / "corpus.jsonl")
        if d.text.strip()
    ]
    queries = list(read_queries(cranfield / "queries.jsonl").values())
    modes: tuple[Mode, ...] = ("bm25", "dense", "hybrid")
    with cluster.client() as sharded, RetrieverClient(retriever.target, timeout=120) as single:
        single.create_collection("cranfield-one")
        single.ingest("cranfield-one", documents)
        expected_figures = {
            mode: evaluate_retrieval(single, "cranfield-one", cranfield, mode) for mode in modes
        }
        for shards in (2, 4):
            name = f"cranfield-{shards}"
            sharded.create_collection(name, shards=shards)
            summary = sharded.ingest(name, documents)
            assert summary.inserted == len(documents)
            assert len(summary.shard_sequences) == shards
            assert all(summary.shard_sequences), "every shard took documents"
            info = {c.name: c for c in sharded.list_collections()}[name]
            assert (info.documents, info.shards) == (len(documents), shards)
            depths: tuple[tuple[Mode, int], ...] = (("bm25", 100), ("dense", 10), ("hybrid", 10))
            for mode, k in depths:
                for start in range(0, len(queries), 32):
                    batch = queries[start : start + 32]
                    one = single.batch_search("cranfield-one", batch, k=k + 1, mode=mode)
                    split = sharded.batch_search(name, batch, k=k, mode=mode)
                    for expected, got in zip(one, split, strict=True):
                        assert_ranked_alike(_ranked(expected), _ranked(got), k, mode)
            for mode in modes:
                figures = evaluate_retrieval(sharded, name, cranfield, mode)
                assert figures == pytest.approx(expected_figures[mode], abs=1e-9), (shards, mode)


def test_writes_spread_over_shards_and_every_replica_reads_its_own_writes(
    cluster: ShardedCluster,
) -> None:
    """Writes and deletes through every replica, each followed at once by a read on the next
    replica (round robin), which must see it: the write's sequence in each shard travels with
    the read. Replicas 1 and 3 hold no shard of the collection and still take every call."""
    name = "spread"
    with cluster.client() as client, cluster.client(0) as holder, cluster.client(1) as asker:
        info = client.create_collection(name, shards=2)
        assert (info.shards, info.documents) == (2, 0)
        for batch in range(8):
            documents = aircraft_documents(batch * 10, 10)
            summary = client.upsert(name, documents)
            assert (summary.inserted, summary.sequence) == (10, 0)
            assert len(summary.shard_sequences) == 2
            doomed = [f"doc-{batch * 10 + 3}", "never-written"]
            assert client.delete(name, doomed) == (1, ["never-written"])
            client.upsert(name, aircraft_documents(batch * 10 + 5, 1, word="tail"))
            # Replica 0 holds both shards; replica 1 asks replicas 0 and 2 for them and keeps
            # their statistics between searches: after a write it must not score with the old
            # ones, so BM25 scores stay the ones the whole collection gives.
            for query in ("wing lift", "tail lift"):
                expected = holder.search(name, query, k=10, mode="bm25", consistency="strong")
                got = asker.search(name, query, k=10, mode="bm25", consistency="strong")
                assert [h.score for h in got] == pytest.approx(
                    [h.score for h in expected], abs=1e-6
                ), (batch, query)
            for _ in range(len(cluster.replicas)):
                hits = client.search(name, f"token{batch * 10 + 7}", k=1, mode="bm25")
                assert hits[0].doc_id == f"doc-{batch * 10 + 7}"
                assert not client.search(name, f"token{batch * 10 + 3}", k=1, mode="bm25")
                replaced = client.get(name, f"doc-{batch * 10 + 5}")
                assert "tail" in replaced.text
        for replica in range(len(cluster.replicas)):
            with cluster.client(replica) as one:
                assert {c.name: c for c in one.list_collections()}[name].documents == 72
                with pytest.raises(NotFound, match="doc-3"):
                    one.get(name, "doc-3")
        held = {}
        for replica in (0, 2):
            with cluster.client(replica) as one:
                stats = one.stats(name)
                assert sorted(s.shard for s in stats) == [0, 1]
                held[replica] = {s.shard: s.documents for s in stats}
        per_shard = [0, 0]
        for i in range(80):
            if i % 10 != 3:
                per_shard[shard_of(f"doc-{i}", 2)] += 1
        assert held[0] == held[2] == dict(enumerate(per_shard))
        assert min(per_shard) > 0
        with cluster.client(1) as holds_none:
            assert holds_none.stats(name) == []
        # A reader that asks for no sequence (eventual) after the shards moved on: replica 1
        # still keeps statistics from before the write, and the shard must refuse to rank
        # with them rather than let the search score with stale figures.
        asker.search(name, "wing lift", k=10, mode="bm25", consistency="eventual")
        client.upsert(name, aircraft_documents(100, 10))
        for holding in (0, 2):
            with cluster.client(holding) as one:
                one.search(name, "wing", k=1, mode="bm25", consistency="strong")
        expected = holder.search(name, "wing lift", k=10, mode="bm25", consistency="eventual")
        got = asker.search(name, "wing lift", k=10, mode="bm25", consistency="eventual")
        assert [h.score for h in got] == pytest.approx([h.score for h in expected], abs=1e-6)
    # Deleted through a replica that holds none of its shards: the count is every shard's.
    with cluster.client(1) as holds_none:
        assert holds_none.delete_collection(name) == 72 + 10
        assert name not in {c.name for c in holds_none.list_collections()}


def test_bad_shard_input_is_refused_by_name(cluster: ShardedCluster) -> None:
    with cluster.client(0) as client:
        with pytest.raises(InvalidArgument, match="config: shards=65"):
            client.create_collection("too-many", shards=65)
        client.create_collection("refusing", shards=2)
        client.create_collection("plain")
    channel = grpc.insecure_channel(cluster.replicas[0].target)
    stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
    cases = [
        ("refusing", [1, 2, 3], "min_shard_sequences has 3 entries"),
        ("plain", [1], "min_shard_sequences is set, but the collection is not sharded"),
    ]
    for collection, sequences, message in cases:
        request = retriever_pb2.SearchRequest(
            collection=collection, query="wing", min_shard_sequences=sequences
        )
        with pytest.raises(grpc.RpcError) as caught:
            stub.Search(request, timeout=30, metadata=AUTHORIZED)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert message in (caught.value.details() or "")
    channel.close()


def test_a_search_s_deadline_goes_with_it_to_every_shard(cluster: ShardedCluster) -> None:
    """Replica 1 holds neither shard of the collection; each shard is asked to wait for a
    sequence it will never reach. Told the caller's deadline, the shards give up just before
    it and the search fails UNAVAILABLE in time, naming a shard; a shard left waiting for its
    own --read-wait-seconds (5 s) would leave the caller with DEADLINE_EXCEEDED instead."""
    with cluster.client(0) as client:
        client.create_collection("deadline", shards=2)
        client.upsert("deadline", aircraft_documents(0, 10))
    request = retriever_pb2.SearchRequest(
        collection="deadline", query="wing", min_shard_sequences=[10**9, 10**9]
    )
    with grpc.insecure_channel(cluster.replicas[1].target) as channel:
        stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            stub.Search(request, timeout=2.0, metadata=AUTHORIZED)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE, caught.value.details()
    assert "is unavailable" in (caught.value.details() or "")
    assert time.monotonic() - started < 2.0


def test_a_single_node_refuses_a_sharded_collection(retriever: RetrieverProcess) -> None:
    with (
        RetrieverClient(retriever.target, timeout=30) as client,
        pytest.raises(FailedPrecondition, match=r"config\.shards=2: a single node"),
    ):
        client.create_collection("sharded-alone", shards=2)


def test_the_command_line_makes_a_sharded_collection_and_shows_each_shard(
    cluster: ShardedCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REALM_TOKEN", TOKEN)
    target = ("--target", cluster.replicas[0].target)
    ingested = realm(
        "ingest", str(FIXTURES / "texts"), "-c", "cli-sharded", "--shards", "2", *target
    )
    # The two texts are written; a batch retried after its acknowledgement was lost (a slow
    # machine) reports them as replaced rather than inserted, which is as right.
    assert "2 passages" in ingested.stdout, ingested.stderr
    shown = realm("stats", "-c", "cli-sharded", "--json", *target)
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)
    assert set(rows) == {"cli-sharded shard 0/2", "cli-sharded shard 1/2"}
    assert sum(row["documents"] for row in rows.values()) == 2


def _search(target: str, collection: str, allow_partial: bool) -> retriever_pb2.SearchResponse:
    with grpc.insecure_channel(target) as channel:
        stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
        request = retriever_pb2.SearchRequest(
            collection=collection, query="wing lift", k=50, allow_partial=allow_partial
        )
        return stub.Search(request, timeout=60, metadata=AUTHORIZED)


def test_a_killed_replica_is_replaced_and_a_lost_shard_is_named(cluster: ShardedCluster) -> None:
    """Replica 1 (shards 2 and 3) is killed while searches run through replica 0: the other
    replica of those shards answers them all. Then replica 3 goes too: shards 2 and 3 have no
    replica left, so a search fails UNAVAILABLE naming one, or with allow_partial answers from
    shards 0 and 1 and lists 2 and 3 as missing."""
    name = "failover"
    documents = aircraft_documents(0, 200)
    with cluster.client(0) as client:
        client.create_collection(name, shards=4)
        client.ingest(name, documents)
        whole = [h.score for h in client.search(name, "wing lift", k=50)]
        failures: list[BaseException] = []
        answered = [0]
        stop = threading.Event()

        def search_until_stopped() -> None:
            while not stop.is_set():
                try:
                    hits = client.search(name, "wing lift", k=50)
                    assert [h.score for h in hits] == pytest.approx(whole, abs=1e-6)
                    answered[0] += 1
                except BaseException as error:
                    failures.append(error)
                    return

        searching = threading.Thread(target=search_until_stopped)
        searching.start()
        try:
            while answered[0] < 5:
                stop.wait(0.05)
            cluster.replicas[1].signal(signal.SIGKILL)
            cluster.replicas[1].process.wait(30)  # type: ignore[union-attr]
            before = answered[0]
            while answered[0] < before + 20 and not failures:
                stop.wait(0.05)
        finally:
            stop.set()
            searching.join(60)
        assert not failures, failures
        cluster.replicas[3].signal(signal.SIGKILL)
        cluster.replicas[3].process.wait(30)  # type: ignore[union-attr]
        with pytest.raises(Unavailable, match=r"shard [23] is unavailable"):
            client.search(name, "wing lift", k=50)
        # The listing still lists the collection, counting the shards that answered.
        info = {c.name: c for c in client.list_collections()}[name]
        assert info.missing_shards == (2, 3)
        assert info.documents == sum(shard_of(d.id, 4) in (0, 1) for d in documents)
    partial = _search(cluster.replicas[0].target, name, allow_partial=True)
    assert list(partial.missing_shards) == [2, 3]
    kept = [h.passage.doc_id for h in partial.hits]
    # The scores are the two shards' own (their statistics, their candidates), not the whole
    # collection's; what matters is that the answer says so.
    assert len(kept) == 50
    assert all(shard_of(doc_id, 4) in (0, 1) for doc_id in kept)
