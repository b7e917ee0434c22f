"""The live index in-process: generation + tail equals a fresh build, the log survives torn
writes, and searches keep working while generations are built and swapped."""

import random
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from realm.errors import NotFound, StorageError
from realm.retriever.collection import Collection
from realm.retriever.embedder import SentenceTransformerEncoder
from realm.retriever.search import SearchQuery
from realm.retriever.settings import CollectionSettings
from realm.retriever.store import StoredDocument
from tests.conftest import flip_byte

WORDS = (
    "river stone lamp harbour glacier copper violin orchard lantern falcon meadow quartz "
    "engine ribbon canyon pepper marble willow thunder saddle beacon cedar comet ember"
).split()
QUERIES = [
    "river stone",
    "glacier copper violin",
    "lantern falcon",
    "thunder beacon cedar comet",
    "marble",
    "pepper orchard meadow quartz engine",
]


def _open(directory: Path, encoder: SentenceTransformerEncoder, threshold: int) -> Collection:
    if (directory / "collection.json").exists():
        return Collection.open(directory, lambda _: encoder, threshold)
    settings = CollectionSettings(language="en")
    return Collection.create("live", directory, settings, lambda _: encoder, threshold)


def _random_text(rng: random.Random) -> str:
    # Zipf-like: early words are common, so document frequencies and lengths vary a lot.
    weights = [1 / (rank + 1) for rank in range(len(WORDS))]
    return " ".join(rng.choices(WORDS, weights, k=rng.randint(3, 40))) + "."


def _all_bm25(collection: Collection, query: str) -> dict[str, float]:
    hits = collection.search(SearchQuery(query, 1000, "bm25"))
    return {h.passage.passage_id: h.score for h in hits}


def _dense(collection: Collection, query: str) -> list[tuple[str, float]]:
    hits = collection.search(SearchQuery(query, 10, "dense"))
    return [(h.passage.passage_id, h.score) for h in hits]


def _live_documents(collection: Collection, ids: list[str]) -> list[StoredDocument]:
    return [collection.get(doc_id)[0] for doc_id in ids]


@pytest.mark.parametrize("seed", [1, 2])
def test_generation_plus_tail_ranks_exactly_like_a_fresh_build(
    tmp_path: Path, encoder: SentenceTransformerEncoder, seed: int
) -> None:
    rng = random.Random(seed)
    live = _open(tmp_path / "live", encoder, threshold=10**9)  # builds only when asked
    order: list[str] = []  # live ids in the order they were last written
    next_id = 0
    for step in range(40):
        action = rng.random()
        if action < 0.5 or len(order) < 5:
            batch = [f"d{next_id + i}" for i in range(rng.randint(1, 4))]
            next_id += len(batch)
        elif action < 0.75:
            batch = rng.sample(order, 2)  # replaced: same ids, new text
        else:
            doomed = rng.sample(order, 2)
            assert live.delete(doomed).deleted == 2
            order = [d for d in order if d not in doomed]
            continue
        live.upsert([StoredDocument(d, _random_text(rng), f"T{d}") for d in batch])
        order = [d for d in order if d not in batch] + batch
        if step in (12, 25):
            live.compact()  # later writes land in a tail over a generation with tombstones
    view = live.snapshot()
    assert view.tail_rows > 0
    assert view.dead_generation_count > 0

    fresh = _open(tmp_path / "fresh", encoder, threshold=10**9)
    fresh.upsert(_live_documents(live, order))
    fresh.compact()
    assert fresh.snapshot().pristine  # scored by the precomputed arrays
    for query in QUERIES:
        expected = _all_bm25(fresh, query)
        got = _all_bm25(live, query)
        assert got.keys() == expected.keys()
        for passage_id, score in expected.items():
            assert got[passage_id] == pytest.approx(score, rel=1e-6)
        assert [p for p, _ in _dense(live, query)] == [p for p, _ in _dense(fresh, query)]
        np.testing.assert_allclose(
            [s for _, s in _dense(live, query)], [s for _, s in _dense(fresh, query)], rtol=1e-5
        )
    assert live.stats().documents == fresh.stats().documents == len(order)
    assert live.stats().passages == fresh.stats().passages

    live.compact()  # folding the tail gives the same ranking again
    assert live.snapshot().pristine
    for query in QUERIES:
        assert _all_bm25(live, query) == pytest.approx(_all_bm25(fresh, query), rel=1e-6)
    assert live.stats().vocabulary == fresh.stats().vocabulary
    live.close()
    fresh.close()


def test_a_write_is_searchable_as_soon_as_it_is_acknowledged(
    tmp_path: Path, encoder: SentenceTransformerEncoder
) -> None:
    collection = _open(tmp_path / "c", encoder, threshold=10**9)
    for i in range(5):
        result = collection.upsert([StoredDocument(f"n{i}", f"zebra{i} crossing notes")])
        assert result.sequence == i + 1
        assert collection.search(SearchQuery(f"zebra{i}", 1, "bm25"))[0].passage.doc_id == f"n{i}"
        assert collection.search(SearchQuery(f"zebra{i}", 5, "dense"))
        assert collection.get(f"n{i}")[0].text == f"zebra{i} crossing notes"
    collection.delete(["n2"])
    assert collection.search(SearchQuery("zebra2", 5, "bm25")) == []
    filtered = collection.search(SearchQuery("crossing", 10, "hybrid", (("lang", "en"),)))
    assert filtered == []  # no tail document carries that metadata
    stats = collection.stats()
    assert (stats.generation, stats.tail_passages, stats.last_sequence) == (0, 4, 6)
    assert stats.wal_bytes > 0
    collection.close()


def _log_of_three_writes(directory: Path, encoder: SentenceTransformerEncoder) -> Path:
    """Three one-document upserts (sequences 1-3); returns the log segment holding them."""
    collection = _open(directory, encoder, threshold=10**9)
    for i in range(3):
        collection.upsert([StoredDocument(f"t{i}", f"torn record test number {i}")])
    collection.close()
    return next((directory / "wal").glob("*.wal"))


@pytest.mark.parametrize(
    "tear",
    [
        pytest.param(lambda data: data[:-7], id="cut-short"),
        # Some file systems extend the file before the data lands: the end reads as zeros.
        pytest.param(lambda data: data[:-7] + b"\0" * 4096, id="zero-filled"),
    ],
)
def test_a_torn_last_log_record_is_dropped_and_earlier_ones_replay(
    tmp_path: Path, encoder: SentenceTransformerEncoder, tear: Callable[[bytes], bytes]
) -> None:
    directory = tmp_path / "c"
    segment = _log_of_three_writes(directory, encoder)
    segment.write_bytes(tear(segment.read_bytes()))  # the last record was being written

    reopened = _open(directory, encoder, threshold=10**9)
    assert reopened.stats().last_sequence == 2
    assert [reopened.get(f"t{i}")[0].doc_id for i in range(2)] == ["t0", "t1"]
    with pytest.raises(NotFound):
        reopened.get("t2")
    assert len(reopened.search(SearchQuery("number", 10, "bm25"))) == 2  # replayed into the tail
    assert reopened.upsert([StoredDocument("t9", "after the repair")]).sequence == 3
    reopened.close()
    again = _open(directory, encoder, threshold=10**9)
    assert again.get("t9")[0].text == "after the repair"
    assert again.stats().documents == 3
    again.close()


def test_damage_in_the_middle_of_the_log_stops_the_open(
    tmp_path: Path, encoder: SentenceTransformerEncoder
) -> None:
    directory = tmp_path / "c"
    segment = _log_of_three_writes(directory, encoder)
    flip_byte(segment, 20)  # inside the first record's payload: sealed history, not a torn tail
    with pytest.raises(StorageError, match="write-ahead log is damaged"):
        _open(directory, encoder, threshold=10**9)


def test_builds_fold_the_tail_and_keep_only_what_a_fallback_needs(
    tmp_path: Path, encoder: SentenceTransformerEncoder
) -> None:
    directory = tmp_path / "c"
    collection = _open(directory, encoder, threshold=10**9)
    for round_number in range(4):
        collection.upsert(
            [
                StoredDocument(f"r{round_number}-{i}", _random_text(random.Random(i)))
                for i in range(3)
            ]
        )
        collection.delete([f"r{round_number}-0"])
        assert collection.compact() == round_number + 1
    generations = sorted(p.name for p in (directory / "generations").iterdir())
    assert generations == ["00000003", "00000004"]
    stats = collection.stats()
    assert (stats.tail_passages, stats.tombstones, stats.documents) == (0, 0, 8)
    segments = sorted(p.name for p in (directory / "wal").glob("*.wal"))
    # Generation 3 covers sequences 1-6; the segment from 7 on is what it would replay.
    assert int(segments[0].removesuffix(".wal")) == 7
    assert collection.compact() == 4  # nothing to fold: no new generation
    collection.close()


def test_searches_never_fail_while_generations_are_built_and_swapped(
    tmp_path: Path, encoder: SentenceTransformerEncoder
) -> None:
    collection = _open(tmp_path / "c", encoder, threshold=12)  # frequent background builds
    collection.upsert([StoredDocument("anchor", "the anchor document about lighthouses")])
    failures: list[BaseException] = []
    searches = 0
    stop = threading.Event()

    def search_forever(mode: str) -> None:
        nonlocal searches
        while not stop.is_set():
            try:
                hits = collection.search(SearchQuery("anchor lighthouses", 5, mode))  # type: ignore[arg-type]
                assert hits
                assert hits[0].passage.doc_id == "anchor", hits
                searches += 1
            except BaseException as error:  # collected and reported below
                failures.append(error)
                return

    threads = [threading.Thread(target=search_forever, args=(m,)) for m in ("bm25", "hybrid")]
    for thread in threads:
        thread.start()
    rng = random.Random(7)
    try:
        for batch in range(30):
            collection.upsert(
                [StoredDocument(f"b{batch}-{i}", _random_text(rng)) for i in range(4)]
            )
            if batch % 3 == 2:
                collection.delete([f"b{batch - 1}-0"])
        collection.compact()
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    assert searches > 0
    assert collection.generation >= 5  # the background builder really ran
    assert collection.stats().documents == 1 + 30 * 4 - 10
    collection.close()
