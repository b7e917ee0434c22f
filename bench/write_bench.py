"""Writes: upsert throughput, acknowledgement-to-searchable time, and search latency as the
tail of unbuilt writes grows.

The peer is what users of Annoy and bm25s do for a new document, since neither can add to a
built index: rebuild both over the whole corpus. ReaLM appends to its write-ahead log (fsynced),
its SQLite store and the in-memory tail, and is searchable on acknowledgement. Search over
generation + tail is compared with the same documents folded into one generation. Vectors come
from a hashing encoder ("without embedding") except in the rows that measure the model's share
and the one that weighs the two encoder backends through a real server's Upsert.
"""

import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from bench.bm25_bench import zipfian
from bench.common import Row, median_seconds
from bench.memory_bench import DIMENSION, TREES, HashingEncoder
from realm.app.corpus import wiki_summaries
from realm.app.supervisor import ServiceProcess
from realm.client import Document, RetrieverClient
from realm.retriever.analyzer import Analyzer
from realm.retriever.collection import Collection
from realm.retriever.embedder import BACKENDS, Backend, load_encoder
from realm.retriever.search import SearchQuery
from realm.retriever.settings import CollectionSettings
from realm.retriever.store import StoredDocument

BATCH = 64
INGEST_BATCH = 256  # documents per Upsert stream, as realm ingest sends them
# Sub-millisecond BM25 latencies need more samples than hybrid ones (~15 ms each).
QUERIES = {"bm25": 400, "hybrid": 50}


def _documents(texts: list[str], first: int) -> list[StoredDocument]:
    return [StoredDocument(f"d{first + i}", text) for i, text in enumerate(texts)]


def _rebuild_seconds(texts: list[str]) -> float:
    """One rebuild of bm25s + Annoy over ``texts``: the peer's cost of adding anything."""
    import bm25s
    from annoy import AnnoyIndex

    analyzer = Analyzer("en")
    vectors = HashingEncoder().encode(texts)

    def rebuild() -> None:
        index = bm25s.BM25(method="lucene")
        index.index([analyzer.tokens(t) for t in texts], show_progress=False)
        annoy = AnnoyIndex(DIMENSION, "angular")
        for row, vector in enumerate(vectors):
            annoy.add_item(row, vector)
        annoy.build(TREES, n_jobs=-1)

    return median_seconds(rebuild, repeats=1, warmup=0)


def _latency_ms(collection: Collection, queries: list[str], mode: str) -> float:
    for query in queries[:20]:  # warm-up, excluded: the first searches of a new view pay more
        collection.search(SearchQuery(query, 10, mode))  # type: ignore[arg-type]
    times = []
    for query in queries:
        started = time.perf_counter()
        collection.search(SearchQuery(query, 10, mode))  # type: ignore[arg-type]
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def _upsert_rate(collection: Collection, texts: list[str], first: int) -> float:
    started = time.perf_counter()
    for offset in range(0, len(texts), BATCH):
        collection.upsert(_documents(texts[offset : offset + BATCH], first + offset))
    return len(texts) / (time.perf_counter() - started)


def _searchable_ms(collection: Collection, texts: list[str], first: int) -> float:
    """Upsert one document, then find it by its unique token: the time until a reader sees it."""
    times = []
    for i, text in enumerate(texts):
        marker = f"fresh{first + i}"
        started = time.perf_counter()
        collection.upsert(_documents([f"{text} {marker}"], first + i))
        hits = collection.search(SearchQuery(marker, 1, "bm25"))
        times.append(time.perf_counter() - started)
        if not hits or hits[0].passage.doc_id != f"d{first + i}":
            raise AssertionError(f"document d{first + i} was not searchable after its upsert")
    return statistics.median(times) * 1000


def run(quick: bool) -> list[Row]:
    base = 20_000 if quick else 100_000
    tails = [1_000, 5_000] if quick else [1_000, 5_000, 20_000]
    writes = 640 if quick else 5_120
    corpus = zipfian(base + writes + 200 + sum(tails), max(QUERIES.values()), length=40)
    texts = [" ".join(words) for words in corpus.documents]
    queries = [" ".join(q) for q in corpus.queries]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        collection = Collection.create(
            "writes",
            Path(tmp) / "writes",
            CollectionSettings(embedding_model="hashing"),
            lambda _: HashingEncoder(),
            compact_threshold=10**9,  # builds only when this benchmark asks
        )
        for offset in range(0, base, 2048):
            collection.upsert(_documents(texts[offset : min(offset + 2048, base)], offset))
        collection.compact()
        cursor = base
        rebuild = _rebuild_seconds(texts[:base])

        rate = _upsert_rate(collection, texts[cursor : cursor + writes], cursor)
        cursor += writes
        rows.append(
            Row(
                f"upsert without embedding, {BATCH}-doc batches, {base:,}-doc collection",
                rate,
                "rebuild bm25s + Annoy per batch",
                BATCH / rebuild,
                "docs/s",
                10.0,
                note="each write is fsynced to the log before it is acknowledged",
            )
        )
        searchable = _searchable_ms(collection, texts[cursor : cursor + 200], cursor)
        cursor += 200
        rows.append(
            Row(
                "one-document upsert until searchable",
                searchable,
                "rebuild bm25s + Annoy",
                rebuild * 1000,
                "ms",
                0.1,
                higher_is_better=False,
            )
        )
        collection.compact()
        for tail in tails:
            collection.upsert(_documents(texts[cursor : cursor + tail], cursor))
            cursor += tail
            with_tail = {m: _latency_ms(collection, queries[: QUERIES[m]], m) for m in QUERIES}
            collection.compact()
            folded = {m: _latency_ms(collection, queries[: QUERIES[m]], m) for m in QUERIES}
            for mode in ("bm25", "hybrid"):
                rows.append(
                    Row(
                        f"{mode} search latency, {tail:,}-passage tail",
                        with_tail[mode],
                        "same documents in one generation",
                        folded[mode],
                        "ms",
                        2.0,
                        higher_is_better=False,
                    )
                )
        collection.close()
        for backend in BACKENDS:
            rows.append(_with_embedding(Path(tmp), texts[: BATCH * (3 if quick else 17)], backend))
        summaries = wiki_summaries(INGEST_BATCH * (3 if quick else 9))
        rows.append(_through_upsert(Path(tmp), summaries))
    return rows


def _with_embedding(folder: Path, texts: list[str], backend: Backend) -> Row:
    """The model's share: ReaLM's upsert against encoding the same passages alone.

    The two sides alternate batch by batch, and which goes first alternates, after one warm-up
    batch each, so a drift in the machine's speed (or the model's first, slower calls) falls on
    both alike. Chunking and analysis overlap encoding (Collection.prepare), so the ratio is the
    share of the write path that is not hidden behind the model."""
    settings = CollectionSettings(embedding_backend=backend)
    encoder = load_encoder(settings.encoder)
    collection = Collection.create(backend, folder / backend, settings, lambda _: encoder, 10**9)
    warmup, measured = texts[:BATCH], texts[BATCH:]
    encoder.encode(warmup)
    collection.upsert(_documents(warmup, -BATCH))
    seconds = {"encode": 0.0, "upsert": 0.0}
    for number, offset in enumerate(range(0, len(measured), BATCH)):
        batch = measured[offset : offset + BATCH]
        sides: dict[str, Callable[[], object]] = {
            "encode": partial(encoder.encode, batch),
            "upsert": partial(collection.upsert, _documents(batch, offset)),
        }
        # Which side goes first alternates too: a fixed order biased bench/encode_bench.py.
        for side in sorted(sides, reverse=number % 2 == 1):
            started = time.perf_counter()
            sides[side]()
            seconds[side] += time.perf_counter() - started
    collection.close()
    realm, raw = len(measured) / seconds["upsert"], len(measured) / seconds["encode"]
    return Row(
        f"upsert with embedding ({backend}), {BATCH}-doc batches",
        realm,
        "encoding the same passages alone",
        raw,
        "docs/s",
        0.9,
        note="the model sets the pace; the log, store and tail add the rest",
    )


def _through_upsert(folder: Path, documents: list[Document]) -> Row:
    """Passages per second through a real server's Upsert, as ``realm ingest`` sends them (256
    documents per stream), into one collection per encoder backend: the int8 ONNX default
    against the float32 torch path every collection used before. Streams alternate between the
    two, and which goes first alternates, after a warm-up stream each."""
    server = ServiceProcess(
        "retriever", folder / "retriever.log", "--data-dir", str(folder / "upsert")
    )
    server.start()
    try:
        server.wait_serving()
        with RetrieverClient(server.target, timeout=3600) as client:
            backends: tuple[Backend, ...] = ("onnx", "torch")
            for backend in backends:
                client.create_collection(backend, embedding_backend=backend)
                client.upsert(backend, documents[:INGEST_BATCH])
            seconds = dict.fromkeys(backends, 0.0)
            passages = dict.fromkeys(backends, 0)
            measured = documents[INGEST_BATCH:]
            for number, offset in enumerate(range(0, len(measured), INGEST_BATCH)):
                batch = measured[offset : offset + INGEST_BATCH]
                for backend in sorted(backends, reverse=number % 2 == 1):
                    started = time.perf_counter()
                    summary = client.upsert(backend, batch, batch_size=INGEST_BATCH)
                    seconds[backend] += time.perf_counter() - started
                    passages[backend] += summary.passages
    finally:
        server.stop()
    return Row(
        f"upsert through gRPC, {len(measured):,} Wikipedia summaries, int8 ONNX encoder",
        passages["onnx"] / seconds["onnx"],
        "float32 torch encoder",
        passages["torch"] / seconds["torch"],
        "passages/s",
        2.5,
        note=f"{INGEST_BATCH}-document streams as realm ingest sends them; the sides alternate",
    )
