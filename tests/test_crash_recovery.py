"""Crash safety of the live index through the real server: SIGKILL at random moments while
documents stream in, deletes and replaces interleave and generations are built; after a restart
every acknowledged write is there exactly once and no deleted document comes back."""

import random
import signal
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2

from realm.client import Document, NotFound, RealmClientError, RetrieverClient
from realm.retriever.collection import Collection
from realm.retriever.embedder import load_encoder
from realm.retriever.search import SearchQuery
from tests.conftest import fill_disk, flip_byte
from tests.servers import RetrieverProcess, health_status

pytestmark = pytest.mark.slow

COLLECTION = "crash"
BATCH = 40
MIN_NEW_PER_ROUND = 200  # documents acknowledged before the kill's random delay starts
THRESHOLD = "300"  # a background generation build every few batches


def _text(doc_id: str, version: int) -> str:
    # A token of its own per document (and version) makes BM25 presence checks exact.
    return f"Record {doc_id} version {version}: marker{doc_id.replace('-', '')}v{version} notes."


class Ledger:
    """What the client was told: acknowledged live documents, acknowledged deletes, and the
    one write in flight when the server died (it may or may not have landed)."""

    def __init__(self) -> None:
        self.live: dict[str, int] = {}  # id -> acknowledged version
        self.deleted: dict[str, int] = {}  # id -> version it had when deleted
        self.in_flight: dict[str, int | None] = {}  # id -> version, None for a delete

    def acknowledge(self) -> None:
        for doc_id, version in self.in_flight.items():
            if version is None:
                self.deleted[doc_id] = self.live.pop(doc_id)
            else:
                self.live[doc_id] = version
        self.in_flight = {}


def _ingest_until_killed(
    server: RetrieverProcess, ledger: Ledger, rng: random.Random, first_id: int, kill_in: float
) -> int:
    """Writes batches until the server is SIGKILLed ``kill_in`` seconds after this round has
    had ``MIN_NEW_PER_ROUND`` new documents acknowledged. Counting from the first write
    instead made the work depend on the machine's speed: a slow CI machine acknowledged too
    few documents for the check to mean much."""
    killer = threading.Timer(kill_in, server.signal, args=(signal.SIGKILL,))
    next_id = first_id
    with RetrieverClient(server.target, timeout=30) as client:
        try:
            while True:
                acknowledged = len(ledger.live) + len(ledger.deleted)
                if not killer.ident and acknowledged >= first_id + MIN_NEW_PER_ROUND:
                    killer.start()  # once: ``ident`` is set from then on
                roll = rng.random()
                if roll < 0.15 and len(ledger.live) > 20:
                    doomed = rng.sample(sorted(ledger.live), 5)
                    ledger.in_flight = dict.fromkeys(doomed)
                    client.delete(COLLECTION, doomed)
                elif roll < 0.3 and len(ledger.live) > 20:
                    replaced = rng.sample(sorted(ledger.live), 10)
                    ledger.in_flight = {d: ledger.live[d] + 1 for d in replaced}
                    client.upsert(
                        COLLECTION,
                        [
                            Document(d, _text(d, v + 1))
                            for d, v in ledger.live.items()
                            if d in ledger.in_flight
                        ],
                    )
                elif roll < 0.35:
                    ledger.in_flight = {}
                    client.compact(COLLECTION)  # a kill may land in the middle of this build
                else:
                    ids = [f"d-{next_id + i}" for i in range(BATCH)]
                    next_id += BATCH
                    ledger.in_flight = dict.fromkeys(ids, 0)
                    client.upsert(COLLECTION, [Document(d, _text(d, 0)) for d in ids])
                ledger.acknowledge()
        except RealmClientError:
            pass  # the server died under this call: in_flight stays undecided
        finally:
            if killer.ident:
                killer.join()
    assert server.wait(10) == -signal.SIGKILL
    return next_id


def _settle(client: RetrieverClient, ledger: Ledger) -> None:
    """Resolves the write in flight at the kill: recovery kept all of it or none of it."""
    if not ledger.in_flight:
        return
    landed = [
        _stored(client, doc_id) == (None if v is None else _text(doc_id, v))
        for doc_id, v in ledger.in_flight.items()
    ]
    assert all(landed) or not any(landed), landed  # one write is atomic
    if all(landed):
        ledger.acknowledge()
    ledger.in_flight = {}


def _stored(client: RetrieverClient, doc_id: str) -> str | None:
    try:
        return client.get(COLLECTION, doc_id).text
    except NotFound:
        return None


def _check_through_the_server(client: RetrieverClient, ledger: Ledger, rng: random.Random) -> None:
    stats = client.stats(COLLECTION)[0]
    assert stats.documents == len(ledger.live)
    assert stats.passages == len(ledger.live)  # one passage per document here
    for doc_id in rng.sample(sorted(ledger.live), min(150, len(ledger.live))):
        version = ledger.live[doc_id]
        assert client.get(COLLECTION, doc_id).text == _text(doc_id, version)
        marker = f"marker{doc_id.replace('-', '')}v{version}"
        hits = client.search(COLLECTION, marker, k=5, mode="bm25")
        assert [h.doc_id for h in hits] == [doc_id]  # exactly once, current version
        dense = client.search(COLLECTION, _text(doc_id, version), k=3, mode="dense")
        assert doc_id in [h.doc_id for h in dense]
    for doc_id in rng.sample(sorted(ledger.deleted), min(50, len(ledger.deleted))):
        with pytest.raises(NotFound):
            client.get(COLLECTION, doc_id)
        marker = f"marker{doc_id.replace('-', '')}v{ledger.deleted[doc_id]}"
        assert client.search(COLLECTION, marker, k=5, mode="bm25") == []


def _check_every_index_row(data_dir: Path, ledger: Ledger) -> None:
    """Opens the collection in-process, with the encoder it records: each acknowledged passage
    is in BM25, dense and the store exactly once, and nothing else is."""
    collection = Collection.open(data_dir / "collections" / COLLECTION, load_encoder)
    try:
        view = collection.snapshot()
        rows = np.concatenate(
            [
                np.flatnonzero(view.generation_alive()),
                np.flatnonzero(view.tail_alive()) + view.generation.n_rows,
            ]
        )
        pids = view.pids(rows)
        assert len(np.unique(pids)) == len(pids) == len(ledger.live)
        records = collection.store.passages([int(p) for p in pids])
        assert sorted(r.doc_id for r in records.values()) == sorted(ledger.live)
        # Dense rows and BM25 rows are the same rows: each live passage has a vector and terms.
        scores = view.bm25_scores(["record"], collection.settings.bm25)
        assert np.count_nonzero(scores[rows]) == len(rows)
        assert np.count_nonzero(scores) == len(rows)  # no dead row scores
        assert view.vectors(rows).shape == (len(rows), collection.dimension)
        probe = rows[: min(20, len(rows))]
        for row in probe:
            pid = int(view.pids(np.asarray([row]))[0])
            hits = collection.search(SearchQuery(records[pid].text, 3, "dense"))
            assert records[pid].doc_id in [h.passage.doc_id for h in hits]
    finally:
        collection.close()


@pytest.mark.parametrize("seed", [11, 22, 33])
def test_sigkill_at_random_moments_loses_no_acknowledged_write(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    data_dir = tmp_path / "data"
    ledger = Ledger()
    next_id = 0
    for round_number in range(2):
        server = RetrieverProcess(data_dir, "--compact-threshold", THRESHOLD)
        server.start().wait_serving()
        try:
            with RetrieverClient(server.target, timeout=30) as client:
                if round_number == 0:
                    client.create_collection(COLLECTION)
                else:
                    _settle(client, ledger)
                    _check_through_the_server(client, ledger, rng)
            next_id = _ingest_until_killed(
                server, ledger, rng, next_id, kill_in=rng.uniform(2.0, 6.0)
            )
        finally:
            server.stop()
        time.sleep(0.1)

    with (
        RetrieverProcess(data_dir, "--compact-threshold", THRESHOLD) as server,
        RetrieverClient(server.target, timeout=30) as client,
    ):
        _settle(client, ledger)
        assert len(ledger.live) + len(ledger.deleted) >= 400  # thousands over the seeds
        _check_through_the_server(client, ledger, rng)
        client.upsert(COLLECTION, [Document("after", "Record written after two crashes")])
        assert client.search(COLLECTION, "crashes", k=1, mode="bm25")[0].doc_id == "after"
        ledger.live["after"] = 0
    _check_every_index_row(data_dir, ledger)


def test_sigkill_in_the_middle_of_a_generation_build_keeps_every_write(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    ledger = Ledger()
    server = RetrieverProcess(data_dir, "--compact-threshold", "1000000")
    server.start().wait_serving()
    try:
        with RetrieverClient(server.target, timeout=120) as client:
            client.create_collection(COLLECTION)
            # Above the exact-search size, so the build includes an Annoy forest (~1 s).
            ledger.in_flight = {f"d-{i}": 0 for i in range(4200)}
            client.upsert(COLLECTION, [Document(d, _text(d, 0)) for d in ledger.in_flight])
            ledger.acknowledge()
            ledger.in_flight = dict.fromkeys([f"d-{i}" for i in range(0, 300, 3)])
            client.delete(COLLECTION, list(ledger.in_flight))
            ledger.acknowledge()
            build = threading.Thread(target=_compact_expecting_death, args=(client,))
            build.start()
            deadline = time.monotonic() + 60
            while "building generation 1" not in server.log():
                assert time.monotonic() < deadline, "the build never started"
                time.sleep(0.01)
            server.signal(signal.SIGKILL)
            build.join(60)
        assert server.wait(10) == -signal.SIGKILL
        assert "serves generation 1" not in server.log()  # the kill landed mid-build
    finally:
        server.stop()

    with (
        RetrieverProcess(data_dir, "--compact-threshold", "1000000") as restarted,
        RetrieverClient(restarted.target, timeout=60) as client,
    ):
        stats = client.stats(COLLECTION)[0]
        assert (stats.generation, stats.tail_passages) == (0, len(ledger.live))
        _check_through_the_server(client, ledger, random.Random(5))
        assert client.compact(COLLECTION) == 1  # the interrupted build's leftovers are replaced
        _check_through_the_server(client, ledger, random.Random(6))
    _check_every_index_row(data_dir, ledger)


def _compact_expecting_death(client: RetrieverClient) -> None:
    with pytest.raises(RealmClientError):
        client.compact(COLLECTION)


def test_a_full_disk_fails_writes_with_a_clear_status_and_keeps_earlier_data(
    small_disk: Path,
) -> None:
    with (
        RetrieverProcess(small_disk / "data") as server,
        RetrieverClient(server.target, timeout=60) as client,
    ):
        client.create_collection(COLLECTION)
        client.upsert(COLLECTION, [Document(f"k{i}", _text(f"k{i}", 0)) for i in range(20)])
        filler = fill_disk(small_disk)
        big = [Document(f"x{i}", "text that cannot be stored now " * 400) for i in range(40)]
        with pytest.raises(RealmClientError, match=r"could not write under .*No space left") as e:
            client.upsert(COLLECTION, big)
        assert e.value.code == grpc.StatusCode.INTERNAL
        stats = client.stats(COLLECTION)[0]
        assert (stats.documents, stats.last_sequence) == (20, 1)
        assert client.search(COLLECTION, "markerk3v0", k=1, mode="bm25")[0].doc_id == "k3"
        filler.unlink()
        assert client.upsert(COLLECTION, big[:2]).sequence == 2  # works again once there is room
    with (
        RetrieverProcess(small_disk / "data") as server,
        RetrieverClient(server.target, timeout=60) as client,
    ):
        assert client.stats(COLLECTION)[0].documents == 22  # the failed write never comes back


def test_searches_over_grpc_never_fail_while_generations_are_swapped(
    retriever: RetrieverProcess, client: RetrieverClient, collection_name: str
) -> None:
    client.create_collection(collection_name)
    client.upsert(collection_name, [Document("anchor", "Record anchor: markeranchor notes.")])
    outcomes: list[str] = []
    stop = threading.Event()

    def search_forever() -> None:
        with RetrieverClient(retriever.target, timeout=30) as reader:
            while not stop.is_set():
                try:
                    hits = reader.search(collection_name, "markeranchor", k=3, mode="hybrid")
                    outcomes.append(hits[0].doc_id if hits else "no hits")
                except RealmClientError as error:
                    outcomes.append(f"{error.code.name}: {error}")

    readers = [threading.Thread(target=search_forever) for _ in range(4)]
    for reader in readers:
        reader.start()
    try:
        for round_number in range(6):
            batch = [
                Document(f"r{round_number}-{i}", _text(f"r{round_number}-{i}", 0))
                for i in range(30)
            ]
            client.upsert(collection_name, batch)
            client.delete(collection_name, [f"r{round_number}-0"])
            assert client.compact(collection_name) == round_number + 1
    finally:
        stop.set()
        for reader in readers:
            reader.join()
    assert len(outcomes) > 20
    assert set(outcomes) == {"anchor"}  # every call answered, and correctly


def test_a_server_recovers_from_a_torn_log_and_a_damaged_generation_and_serves(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    documents = [Document(f"g-{i}", _text(f"g-{i}", 0)) for i in range(60)]
    with (
        RetrieverProcess(data_dir) as server,
        RetrieverClient(server.target, timeout=60) as client,
    ):
        client.create_collection(COLLECTION)
        client.upsert(COLLECTION, documents[:30])
        assert client.compact(COLLECTION) == 1
        client.upsert(COLLECTION, documents[30:50])
        client.delete(COLLECTION, ["g-0"])
        assert client.compact(COLLECTION) == 2
        client.upsert(COLLECTION, documents[50:])  # sequence 4, in the tail
        client.upsert(COLLECTION, [Document("torn", "Record torn: this write will be cut.")])
    collection_dir = data_dir / "collections" / COLLECTION
    flip_byte(collection_dir / "generations" / "00000002" / "bm25_data.npy", -3)
    (segment,) = sorted((collection_dir / "wal").glob("*.wal"))[-1:]
    segment.write_bytes(segment.read_bytes()[:-5])  # the last record's end never reached disk

    with (
        RetrieverProcess(data_dir) as server,  # waits for health SERVING
        RetrieverClient(server.target, timeout=60) as client,
    ):
        assert health_status(server.target) == health_pb2.HealthCheckResponse.SERVING
        assert "falling back to generation 1" in server.log()
        assert "dropped an incomplete last record" in server.log()
        stats = client.stats(COLLECTION)[0]
        assert (stats.generation, stats.documents, stats.last_sequence) == (1, 59, 4)
        with pytest.raises(NotFound):
            client.get(COLLECTION, "g-0")
        with pytest.raises(NotFound):
            client.get(COLLECTION, "torn")
        for document in documents[1:]:
            marker = f"marker{document.id.replace('-', '')}v0"
            assert [h.doc_id for h in client.search(COLLECTION, marker, mode="bm25")] == [
                document.id
            ]
