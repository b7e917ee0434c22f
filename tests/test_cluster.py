"""Cluster mode for real: three ``nats-server`` processes in one JetStream cluster and three
retriever replicas (``--nats``), all on loopback, killed with signals and started again.

Every replica applies every collection's log in order, so they hold the same content (equal
state digests, equal to a single node fed the same writes), a client reads its own writes
whichever replica answers, a re-sent write is applied once, a killed replica catches up, and
losing the NATS quorum fails writes fast while searches keep answering.
"""

import asyncio
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from bench.nats_cluster import NatsCluster, log_first_sequence
from realm.client import (
    AlreadyExists,
    CollectionStats,
    Document,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    RetrieverClient,
    Unavailable,
)
from realm.retriever.embedder import MULTILINGUAL_MODEL
from realm.retriever.jetstream import stop_task
from realm.v1 import common_pb2, retriever_pb2, retriever_pb2_grpc
from tests.servers import RetrieverProcess

pytestmark = pytest.mark.timeout(600)
REPLICAS = 3


class Cluster:
    def __init__(self, nats: NatsCluster, replicas: list[RetrieverProcess]) -> None:
        self.nats = nats
        self.replicas = replicas

    @property
    def targets(self) -> list[str]:
        return [replica.target for replica in self.replicas]

    def client(self, **options: object) -> RetrieverClient:
        """A client balancing over every replica (round robin, UNAVAILABLE retried)."""
        return RetrieverClient(self.targets, timeout=30, **options)  # type: ignore[arg-type]

    def stats(self, replica: int, collection: str) -> CollectionStats:
        return _stats(self.replicas[replica].target, collection)

    def settled(self, collection: str, *others: str, timeout: float = 60.0) -> list[str]:
        """Each replica's digest, then those of the ``others`` (targets of replicas outside
        the cluster's list), once all have applied the same sequence."""
        deadline = time.monotonic() + timeout
        while True:
            stats = [_stats(target, collection) for target in [*self.targets, *others]]
            sequences = {s.last_sequence for s in stats}
            if len(sequences) == 1 and all(s.lag == 0 for s in stats):
                return [s.state_digest for s in stats]
            assert time.monotonic() < deadline, f"replicas did not converge: {stats}"
            time.sleep(0.2)


def _stats(target: str, collection: str) -> CollectionStats:
    with RetrieverClient(target, timeout=30) as client:
        return client.stats(collection, digest=True)[0]


def _replica(directory: Path, nats: NatsCluster) -> RetrieverProcess:
    return RetrieverProcess(
        directory,
        "--nats",
        nats.urls,
        "--nats-replicas",
        str(min(3, len(nats.servers))),
        "--compact-threshold",
        "40",
        # Trim each log as far as the newest snapshot and every replica allow.
        "--snapshot-retain-records",
        "0",
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("cluster")
    with NatsCluster(root, 3) as nats:
        replicas = [_replica(root / f"replica-{i}" / "data", nats) for i in range(REPLICAS)]
        for replica in replicas:
            replica.start()
        try:
            for replica in replicas:
                replica.wait_serving()
            yield Cluster(nats, replicas)
        finally:
            for replica in replicas:
                replica.stop()


def aircraft_documents(first: int, count: int, word: str = "wing") -> list[Document]:
    return [
        Document(
            f"doc-{i}",
            f"Token{i} describes the {word} of aircraft number {i} and its lift at low speed.",
            title=f"Aircraft {i}",
            metadata={"parity": str(i % 2)},
        )
        for i in range(first, first + count)
    ]


def test_writes_through_any_replica_are_read_everywhere_and_replicas_agree(
    cluster: Cluster, retriever: RetrieverProcess
) -> None:
    """Writes spread over the replicas, each followed by a read that must see it (whichever
    replica answers); then every replica holds what a single node fed the same writes holds."""
    name = "agree"
    with cluster.client() as client, RetrieverClient(retriever.target, timeout=60) as single:
        client.create_collection(name)
        single.create_collection(name)
        for batch in range(10):
            documents = aircraft_documents(batch * 20, 20)
            client.upsert(name, documents)
            single.upsert(name, documents)
            doomed = [f"doc-{batch * 20 + 3}", "never-written"]
            assert client.delete(name, doomed) == (1, ["never-written"])
            single.delete(name, doomed)
            replaced = aircraft_documents(batch * 20 + 5, 1, word="tail")
            client.upsert(name, replaced)
            single.upsert(name, replaced)
            for attempt in range(REPLICAS):  # round robin: each read on another replica
                hits = client.search(name, f"token{batch * 20 + 7}", k=1, mode="bm25")
                assert hits[0].doc_id == f"doc-{batch * 20 + 7}", f"read {attempt} missed"
        single_stats = single.stats(name, digest=True)[0]
        digests = cluster.settled(name)
        assert len(set(digests)) == 1
        assert digests[0] == single_stats.state_digest
        assert cluster.stats(0, name).documents == single_stats.documents == 190
        # Generations were built on every replica (threshold 40) and results still agree.
        assert all(cluster.stats(i, name).generation >= 1 for i in range(REPLICAS))
        rankings = []
        for target in cluster.targets:
            with RetrieverClient(target, timeout=30) as one:
                rankings.append(
                    [(h.doc_id, round(h.score, 5)) for h in one.search(name, "tail lift", k=10)]
                )
        assert rankings[0] == rankings[1] == rankings[2]
        single.delete_collection(name)


def test_collections_made_and_deleted_through_one_replica_change_on_all(cluster: Cluster) -> None:
    with RetrieverClient(cluster.targets[0], timeout=30) as first:
        first.create_collection("comes-and-goes")
    deadline = time.monotonic() + 30
    for replica in cluster.replicas:
        with RetrieverClient(replica.target, timeout=30) as client:
            while "comes-and-goes" not in [c.name for c in client.list_collections()]:
                assert time.monotonic() < deadline
                time.sleep(0.1)
    with RetrieverClient(cluster.targets[2], timeout=30) as last:
        with pytest.raises(AlreadyExists, match="exists already"):
            last.create_collection("comes-and-goes")
        with pytest.raises(InvalidArgument, match="embedding_model"):
            last.create_collection("unservable", embedding_model="no/such-model")
        assert "unservable" not in [c.name for c in last.list_collections()]
        with pytest.raises(FailedPrecondition, match="single node only"):
            last.reindex("comes-and-goes", MULTILINGUAL_MODEL)
        assert last.delete_collection("comes-and-goes") == 0
    for replica in cluster.replicas:
        with RetrieverClient(replica.target, timeout=30) as client:
            while "comes-and-goes" in [c.name for c in client.list_collections()]:
                assert time.monotonic() < deadline
                time.sleep(0.1)


def test_a_collection_made_through_one_replica_is_written_at_once_through_another(
    cluster: Cluster,
) -> None:
    """No polling: the second replica waits for the catalog, the third reads strongly."""
    first, second, third = (RetrieverClient(t, timeout=30) for t in cluster.targets)
    with first, second, third:
        first.create_collection("made-elsewhere")
        second.upsert("made-elsewhere", aircraft_documents(0, 5))
        hits = third.search("made-elsewhere", "token3", k=1, mode="bm25", consistency="strong")
        assert [h.doc_id for h in hits] == ["doc-3"]
        with pytest.raises(NotFound, match="does not exist"):
            second.search("never-made", "anything")


def test_a_resent_write_is_applied_once(cluster: Cluster) -> None:
    name = "resent"
    with cluster.client() as client:
        client.create_collection(name)
    request = retriever_pb2.UpsertRequest(
        collection=name, documents=[common_pb2.Document(id="once", text="applied exactly once")]
    )
    metadata = (("x-request-id", "same-write-sent-twice"),)
    sequences = []
    for replica in (0, 1):  # the second send goes to another replica, as a retry may
        with grpc.insecure_channel(cluster.targets[replica]) as channel:
            stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
            sequences.append(stub.Upsert(iter([request]), metadata=metadata, timeout=30).sequence)
    assert sequences[0] == sequences[1] == 1
    cluster.settled(name)
    assert all(cluster.stats(i, name).last_sequence == 1 for i in range(REPLICAS))


def test_a_thousand_interleaved_writes_and_reads_see_their_own_writes(cluster: Cluster) -> None:
    name = "read-your-writes"
    with cluster.client() as client:
        client.create_collection(name)
        for i in range(1000):
            client.upsert(name, [Document(f"w{i}", f"uniqueword{i} written by the client")])
            hits = client.search(name, f"uniqueword{i}", k=1, mode="bm25")
            assert [h.doc_id for h in hits] == [f"w{i}"], f"write {i} not seen"
    assert len(set(cluster.settled(name))) == 1


def test_a_replica_killed_during_writes_catches_up_on_restart(cluster: Cluster) -> None:
    """SIGKILL while the victim applies a stream of writes (through the other replicas); the
    writes go on; restarted on its files, it replays what it missed and equals the others."""
    name = "catch-up"
    victim = cluster.replicas[2]
    with cluster.client() as client:
        client.create_collection(name)
        client.upsert(name, aircraft_documents(0, 30))
    acknowledged: list[int] = []

    def write() -> None:
        with RetrieverClient(cluster.targets[:2], timeout=30) as survivors:
            for batch in range(1, 11):
                survivors.upsert(name, aircraft_documents(batch * 30, 30))
                survivors.delete(name, [f"doc-{batch}"])
                acknowledged.append(batch)

    writer = threading.Thread(target=write)
    writer.start()
    while len(acknowledged) < 3:  # the victim is applying the writes when it dies
        assert writer.is_alive(), "the writer stopped before the kill"
        time.sleep(0.01)
    victim.signal(signal.SIGKILL)
    assert victim.wait(10) == -signal.SIGKILL
    writer.join(120)
    assert acknowledged == list(range(1, 11)), "writes stopped when a replica died"
    victim.start().wait_serving()
    digests = cluster.settled(name)
    assert len(set(digests)) == 1
    assert cluster.stats(2, name).documents == 330 - 10


def test_a_replica_started_after_the_log_was_trimmed_boots_from_a_snapshot(
    cluster: Cluster, tmp_path: Path
) -> None:
    name = "trimmed"
    with cluster.client() as client:
        client.create_collection(name)
        for batch in range(6):  # generations are sealed (threshold 40) and snapshots stored
            client.upsert(name, aircraft_documents(batch * 20, 20))
        client.delete(name, ["doc-3"])
    cluster.settled(name)
    deadline = time.monotonic() + 60
    while log_first_sequence(cluster.nats.urls, name) <= 1:
        assert time.monotonic() < deadline, "the log was never trimmed below a snapshot"
        time.sleep(0.2)
    with _replica(tmp_path / "late" / "data", cluster.nats) as late:
        # Serving starts once the snapshot is restored; the log's records after it (the delete
        # among them) are applied while it serves.
        digests = cluster.settled(name, late.target)
        assert digests[-1] == digests[0]
        with RetrieverClient(late.target, timeout=30) as client:
            stats = client.stats(name, digest=True)[0]
            assert stats.documents == 119
            assert stats.generation >= 1
            hits = client.search(name, "token77", k=1, mode="hybrid")
            assert hits[0].doc_id == "doc-77"
        assert "restored from the snapshot" in late.log()


def test_losing_the_nats_quorum_fails_writes_fast_and_reads_go_on(cluster: Cluster) -> None:
    """Runs last: it kills NATS servers (and starts them again)."""
    name = "quorum"
    with cluster.client() as client:
        client.create_collection(name)
        client.upsert(name, aircraft_documents(0, 10))
        cluster.nats.servers[0].kill()
        # One of three down: writes go on once the streams the lost server led have elected a
        # new leader (a few seconds; meanwhile writes fail with UNAVAILABLE, never hang).
        _write_when_available(client, name, aircraft_documents(10, 10))
        cluster.settled(name)  # every replica has applied it before the quorum goes
        cluster.nats.servers[1].kill()
        request = retriever_pb2.UpsertRequest(
            collection=name, documents=[common_pb2.Document(id="no-quorum", text="late write")]
        )
        metadata = (("x-request-id", "written-without-quorum"),)
        for target in cluster.targets:  # one attempt through each replica, no client retries
            with grpc.insecure_channel(target) as channel:
                stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
                started = time.monotonic()
                with pytest.raises(grpc.RpcError) as failed:
                    stub.Upsert(iter([request]), metadata=metadata, timeout=30)
                took = time.monotonic() - started
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, failed.value.details()
            assert took < 3.0, f"a write without quorum took {took:.1f} s to fail"
        for target in cluster.targets:  # every replica answers from what it applied
            with RetrieverClient(target, timeout=30, consistency="eventual") as one:
                hits = one.search(name, "token15", k=1, mode="bm25")
            assert [h.doc_id for h in hits] == ["doc-15"]
        cluster.nats.servers[0].start()
        cluster.nats.servers[1].start()
        cluster.nats.wait_ready()
        _write_when_available(client, name, aircraft_documents(20, 10))
        # A replica whose NATS connection came back late may still be applying the log; the
        # resend below waits only 5 s for its own write to be applied there.
        cluster.settled(name)
        # The unacknowledged write may have been stored after all (only its acknowledgement
        # was missing); sent again with its request id, it is applied exactly once.
        with grpc.insecure_channel(cluster.targets[1]) as channel:
            stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
            stub.Upsert(iter([request]), metadata=metadata, timeout=30)
    assert len(set(cluster.settled(name))) == 1
    assert cluster.stats(0, name).documents == 31
    with cluster.client() as client:
        assert [h.doc_id for h in client.search(name, "token12", k=1, mode="bm25")] == ["doc-12"]


def _write_when_available(client: RetrieverClient, name: str, documents: list[Document]) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            client.upsert(name, documents)
            return
        except Unavailable:
            assert time.monotonic() < deadline, "writes did not resume"
            time.sleep(0.5)


async def test_a_follower_that_dropped_its_cancellation_is_stopped_all_the_same() -> None:
    """On Python 3.11, asyncio.wait_for returns a result that arrives together with the
    cancellation and drops the cancellation (CPython gh-86296). A collection's follower is
    cancelled just as the deletion of its stream ends its pending fetch; it must still stop, or
    the catalog, which waits for it, stops applying changes on that replica."""
    loop = asyncio.get_running_loop()
    first_fetch: asyncio.Future[str] = loop.create_future()

    async def follower() -> None:
        fetch = first_fetch
        while True:
            await asyncio.wait_for(fetch, timeout=60)
            fetch = loop.create_future()  # the next fetch waits for records that never come

    task = asyncio.create_task(follower())
    await asyncio.sleep(0)  # the follower waits in its first fetch
    first_fetch.set_result("the stream's deletion")
    await asyncio.wait_for(stop_task(task), timeout=10)
    assert task.cancelled()
