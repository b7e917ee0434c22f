"""The collection core in-process: search modes, writes, filters, persistence and rollback."""

import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from realm.errors import NotFound, StorageError
from realm.retriever.collection import Collection
from realm.retriever.embedder import Encoder, SentenceTransformerEncoder
from realm.retriever.search import SearchMode, SearchQuery
from realm.retriever.settings import CollectionSettings
from realm.retriever.store import StoredDocument
from realm.retriever.topk import FloatArray
from tests.conftest import fill_disk, fixture_documents, flip_byte


class CountingEncoder:
    """Wraps the real model and counts the texts it encodes (to prove what is not re-encoded)."""

    def __init__(self, inner: Encoder, fail: bool = False) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.dimension = inner.dimension
        self.fingerprint = inner.fingerprint
        self.encoded = 0
        self.fail = fail

    def encode(self, texts: list[str]) -> FloatArray:
        if self.fail:
            raise RuntimeError("encoder failure injected by the test")
        self.encoded += len(texts)
        return self.inner.encode(texts)

    def encode_queries(self, texts: list[str]) -> FloatArray:
        self.encoded += len(texts)
        return self.inner.encode_queries(texts)


def _documents() -> list[StoredDocument]:
    return [StoredDocument(d.id, d.text, d.title, dict(d.metadata)) for d in fixture_documents()]


def _open(directory: Path, encoder: Encoder, language: str = "en") -> Collection:
    settings = CollectionSettings(language=language)  # type: ignore[arg-type]
    if (directory / "collection.json").exists():
        return Collection.open(directory, lambda _: encoder)
    return Collection.create("test", directory, settings, lambda _: encoder)


@pytest.fixture
def filled(tmp_path: Path, encoder: SentenceTransformerEncoder) -> Collection:
    collection = _open(tmp_path / "c", encoder)
    collection.upsert(_documents())
    return collection


def _top(
    collection: Collection, text: str, mode: str = "hybrid", k: int = 3, **kw: object
) -> list[str]:
    hits = collection.search(SearchQuery(text, k, mode, **kw))  # type: ignore[arg-type]
    return [h.passage.doc_id for h in hits]


@pytest.mark.parametrize("mode", ["bm25", "dense", "hybrid"])
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("iron tower in Paris", "eiffel"),
        ("how do plants turn sunlight into sugar", "photosynthesis"),
        ("机器学习", "zh-ml"),
        ("remote procedure calls over HTTP/2", "grpc"),
    ],
)
def test_every_mode_finds_the_obvious_document(
    filled: Collection, mode: str, query: str, expected: str
) -> None:
    assert _top(filled, query, mode)[0] == expected


def test_hits_carry_exact_passage_offsets_and_metadata(filled: Collection) -> None:
    hit = filled.search(SearchQuery("Colosseum amphitheatre Rome", 1, "bm25"))[0]
    document, _ = filled.get(hit.passage.doc_id)
    assert document.text[hit.passage.start : hit.passage.end] == hit.passage.text
    assert hit.passage.metadata == {"lang": "en", "topic": "landmark"}
    assert hit.passage.title == "Colosseum"


def test_hits_return_awkward_text_exactly(
    tmp_path: Path, encoder: SentenceTransformerEncoder
) -> None:
    # Hits travel from SQLite packed as JSON: quotes, escapes, control characters, astral
    # characters and JSON-looking metadata must come back unchanged.
    # (NUL is refused at the API: SQLite's substr would cut the text there.)
    text = 'zebra "quoted" back\\slash tab\there\nnew line \x01\x1f 𝄞 emoji 🦓 {"a": [1]}'
    metadata = {"note": '{"not": "parsed"}', "nul": "a\x00b", "quote": '"', "ünï": "çødé"}
    collection = _open(tmp_path / "c", encoder, language="en")
    collection.upsert([StoredDocument("odd", text, 'Title "with" \\ quotes', metadata)])
    (hit,) = collection.search(SearchQuery("zebra", 1, "bm25"))
    assert hit.passage.text == text
    assert hit.passage.title == 'Title "with" \\ quotes'
    assert hit.passage.metadata == metadata
    assert type(hit.passage.pid) is int
    assert (hit.passage.start, hit.passage.end) == (0, len(text))


def test_filters_apply_before_top_k_is_cut(filled: Collection) -> None:
    modes: tuple[SearchMode, ...] = ("bm25", "dense", "hybrid")
    for mode in modes:
        # The landmarks outscore both food documents on "tower"; the filter must win anyway.
        hits = filled.search(SearchQuery("famous tower caffeine", 2, mode, (("topic", "food"),)))
        assert sorted(h.passage.doc_id for h in hits) == ["coffee", "zh-tea"]
    both = filled.search(
        SearchQuery("anything at all", 10, "dense", (("lang", "zh"), ("topic", "food")))
    )
    assert [h.passage.doc_id for h in both] == ["zh-tea"]
    assert filled.search(SearchQuery("tower", 5, "hybrid", (("topic", "nope"),))) == []


def test_replace_and_delete(filled: Collection) -> None:
    before = filled.stats()
    result = filled.upsert(
        [StoredDocument("volcano", "Glaciers are slow rivers of ice.", "Glacier")]
    )
    assert (result.inserted, result.replaced) == (0, 1)
    assert _top(filled, "glacier ice river", "bm25", 1) == ["volcano"]
    assert "volcano" not in _top(filled, "lava magma chamber", "bm25", 12)
    assert filled.stats().documents == before.documents

    deleted = filled.delete(["coffee", "no-such-id"])
    assert (deleted.deleted, deleted.not_found) == (1, ["no-such-id"])
    assert "coffee" not in _top(filled, "coffee beans caffeine", "hybrid", 12)
    with pytest.raises(NotFound, match="coffee"):
        filled.get("coffee")
    assert filled.stats().documents == before.documents - 1


def test_only_new_passages_are_encoded(tmp_path: Path, encoder: SentenceTransformerEncoder) -> None:
    counting = CountingEncoder(encoder)
    collection = _open(tmp_path / "c", counting)
    collection.upsert(_documents())
    first = counting.encoded
    collection.upsert([StoredDocument("new", "A brand new document about lighthouses.")])
    assert counting.encoded == first + 1
    collection.delete(["eiffel"])
    assert counting.encoded == first + 1


def test_reopened_collection_serves_the_same_results_without_re_encoding(
    tmp_path: Path, encoder: SentenceTransformerEncoder
) -> None:
    directory = tmp_path / "c"
    collection = _open(directory, encoder)
    collection.upsert(_documents())
    queries = ["tea and coffee", "长城", "organelle energy", "search ranking function"]
    before = [collection.search(SearchQuery(q, 5, "hybrid")) for q in queries]
    collection.close()

    counting = CountingEncoder(encoder)
    reopened = _open(directory, counting)
    after = [reopened.search(SearchQuery(q, 5, "hybrid")) for q in queries]
    assert counting.encoded == len(queries)  # the queries only; no passage was re-encoded
    for old, new in zip(before, after, strict=True):
        assert [h.passage.passage_id for h in old] == [h.passage.passage_id for h in new]
        np.testing.assert_allclose([h.score for h in old], [h.score for h in new], rtol=1e-6)
    assert reopened.generation == collection.generation
    filtered = reopened.search(SearchQuery("caffeine tower", 5, "hybrid", (("topic", "food"),)))
    assert sorted(h.passage.doc_id for h in filtered) == ["coffee", "zh-tea"]  # filters survive


def test_a_failed_build_changes_nothing(
    tmp_path: Path, encoder: SentenceTransformerEncoder
) -> None:
    counting = CountingEncoder(encoder)
    collection = _open(tmp_path / "c", counting)
    collection.upsert(_documents())
    before = collection.stats()
    counting.fail = True
    with pytest.raises(RuntimeError, match="injected"):
        collection.upsert(
            [StoredDocument("eiffel", "replaced text"), StoredDocument("x", "new text")]
        )
    counting.fail = False
    assert collection.stats() == before
    assert collection.get("eiffel")[0].text.startswith("The Eiffel Tower")
    with pytest.raises(NotFound):
        collection.get("x")
    collection.upsert([StoredDocument("x", "new text about harbours")])
    assert collection.stats().documents == before.documents + 1


def test_disk_full_fails_the_write_clearly_and_keeps_earlier_data(
    small_disk: Path, encoder: SentenceTransformerEncoder
) -> None:
    collection = _open(small_disk / "c", encoder)
    collection.upsert(_documents())
    before = collection.stats()
    filler = fill_disk(small_disk)
    with pytest.raises(StorageError, match="could not write under"):
        collection.upsert(
            [StoredDocument(f"x{i}", "text that cannot be indexed now " * 50) for i in range(50)]
        )
    assert collection.stats() == before
    assert _top(collection, "iron tower in Paris", "bm25", 1) == ["eiffel"]
    filler.unlink()
    collection.upsert([StoredDocument("x", "text indexed once there is space again")])
    assert collection.stats().documents == before.documents + 1
    collection.close()


def test_read_only_data_directory_fails_writes_and_keeps_serving(
    small_disk: Path, encoder: SentenceTransformerEncoder
) -> None:
    collection = _open(small_disk / "c", encoder)
    collection.upsert(_documents())
    before = collection.stats()
    remounted = subprocess.run(
        ["mount", "-o", "remount,ro", str(small_disk)], capture_output=True, check=False
    )
    if remounted.returncode != 0:  # the kernel refuses while files are open for writing
        collection.close()
        pytest.skip(f"cannot remount read-only here: {remounted.stderr.decode().strip()}")
    try:
        with pytest.raises(StorageError, match="could not write under"):
            collection.upsert([StoredDocument("x", "nothing can be written")])
        with pytest.raises(StorageError, match="could not write under"):
            collection.delete(["eiffel"])
        with pytest.raises(StorageError, match="could not build generation"):
            collection.compact()
        assert collection.stats() == before
        assert _top(collection, "iron tower in Paris", "hybrid", 1) == ["eiffel"]
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    collection.upsert([StoredDocument("x", "written after the disk came back")])
    assert collection.stats().documents == before.documents + 1
    assert collection.get("eiffel")
    assert collection.compact() == 1
    collection.close()


def test_a_damaged_newest_generation_falls_back_to_the_previous_and_replays(
    tmp_path: Path, encoder: SentenceTransformerEncoder
) -> None:
    directory = tmp_path / "c"
    collection = _open(directory, encoder)
    documents = _documents()
    collection.upsert(documents[:6])
    assert collection.compact() == 1
    collection.upsert(documents[6:])
    collection.delete(["eiffel"])
    assert collection.compact() == 2
    collection.upsert([StoredDocument("tail-only", "A lighthouse keeper's logbook.")])
    queries = ["tea and coffee", "长城", "organelle energy", "lighthouse", "iron tower"]
    before = [_top(collection, q, "hybrid", 5) for q in queries]
    collection.close()
    flip_byte(directory / "generations" / "00000002" / "bm25_data.npy", -1)

    reopened = _open(directory, encoder)
    assert reopened.generation == 1  # the previous generation, plus the log replayed past it
    assert [_top(reopened, q, "hybrid", 5) for q in queries] == before
    with pytest.raises(NotFound):
        reopened.get("eiffel")
    assert reopened.stats().documents == len(documents)  # -1 deleted, +1 tail-only
    assert reopened.compact() == 2  # the next build takes the damaged one's number and place
    assert [_top(reopened, q, "hybrid", 5) for q in queries] == before
    reopened.close()


def test_damage_in_every_kept_generation_stops_the_open(
    tmp_path: Path, encoder: SentenceTransformerEncoder
) -> None:
    directory = tmp_path / "c"
    collection = _open(directory, encoder)
    collection.upsert(_documents()[:4])
    collection.compact()
    collection.upsert(_documents()[4:])
    collection.compact()
    collection.upsert([StoredDocument("late", "A late document.")])
    collection.compact()  # generations 3 and 2 are kept; the log before 2 is gone
    collection.close()
    for number in ("00000002", "00000003"):
        damaged = directory / "generations" / number / "pids.npy"
        damaged.write_bytes(damaged.read_bytes()[:-1])
    with pytest.raises(StorageError, match="sha256"):
        _open(directory, encoder)


def test_searches_during_a_rebuild_never_fail(filled: Collection) -> None:
    errors: list[BaseException] = []
    stop = threading.Event()

    def search_forever() -> None:
        while not stop.is_set():
            try:
                hits = filled.search(SearchQuery("tower", 3, "hybrid"))
                assert hits
                assert hits[0].passage.text
            except BaseException as error:  # collected and reported below
                errors.append(error)
                return

    thread = threading.Thread(target=search_forever)
    thread.start()
    try:
        for round_number in range(3):
            filled.upsert(
                [StoredDocument(f"extra-{round_number}", f"Tower number {round_number}.")]
            )
            filled.delete(["colosseum"] if round_number == 0 else [f"extra-{round_number - 1}"])
    finally:
        stop.set()
        thread.join()
    assert errors == []
