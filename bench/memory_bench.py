"""Memory: resident bytes (PSS) of a loaded, queried collection against bm25s + Annoy alone.

The same passages (a synthetic Zipfian corpus, one passage per document) and the same 384-d
vectors go into a ReaLM collection (BM25 + dense + SQLite store + filters) and into a bm25s
index plus an Annoy index with the same number of trees. Each side is then loaded in a fresh
process and asked the same queries, and the growth of its proportional set size (PSS) over the
process's baseline after imports is what is compared. Vectors come from a hashing encoder: the
embedding model's own memory is the same for both and is not what is measured.
"""

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.bm25_bench import zipfian
from bench.common import Row
from realm.retriever.embedder import EncoderSpec
from realm.retriever.topk import FloatArray

DIMENSION = 384
TREES = 32
QUERIES = 200


class HashingEncoder:
    """Deterministic unit vectors from the text's hash: stands in for a model, costs nothing."""

    model_id = "hashing"
    dimension = DIMENSION
    fingerprint = "hashing"

    def encode(self, texts: list[str]) -> FloatArray:
        vectors = np.empty((len(texts), DIMENSION), dtype=np.float32)
        for row, text in enumerate(texts):
            seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
            vectors[row] = np.random.default_rng(seed).standard_normal(DIMENSION)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors

    def encode_queries(self, texts: list[str]) -> FloatArray:
        return self.encode(texts)


def _load_encoder(_: EncoderSpec) -> HashingEncoder:
    return HashingEncoder()


def _resident_bytes() -> int:
    """Proportional set size: resident pages, each shared page split among its mappings.

    Plain VmRSS counts a file page once per mapping, and ReaLM maps Annoy's file twice (Annoy's
    own map, and the vector view over it), so RSS would count those pages double although they
    are one copy in memory. PSS counts what the process really holds; for the peer, which maps
    each file once, the two measures agree."""
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/smaps_rollup has no Pss (Linux 4.14+ only)")


def build(folder: Path, passages: int) -> None:
    """Writes the ReaLM collection and the peer's two indexes for the same passages."""
    import bm25s
    from annoy import AnnoyIndex

    from realm.retriever.analyzer import Analyzer
    from realm.retriever.collection import Collection
    from realm.retriever.settings import CollectionSettings
    from realm.retriever.store import StoredDocument

    corpus = zipfian(passages, QUERIES, length=40)
    texts = [" ".join(words) for words in corpus.documents]
    collection = Collection.create(
        "memory", folder / "realm", CollectionSettings(embedding_model="hashing"), _load_encoder
    )
    collection.upsert([StoredDocument(f"d{i}", text) for i, text in enumerate(texts)])
    collection.compact()
    collection.close()

    analyzer = Analyzer("en")
    peer_bm25 = bm25s.BM25(method="lucene")
    peer_bm25.index([analyzer.tokens(text) for text in texts], show_progress=False)
    peer_bm25.save(str(folder / "bm25s"))
    vectors = HashingEncoder().encode(texts)
    annoy = AnnoyIndex(DIMENSION, "angular")
    for row, vector in enumerate(vectors):
        annoy.add_item(row, vector)
    annoy.build(TREES, n_jobs=1)
    annoy.save(str(folder / "peer.ann"))
    queries = [" ".join(q) for q in corpus.queries]
    (folder / "queries.json").write_text(json.dumps(queries), encoding="utf-8")


def measure(side: str, folder: Path) -> int:
    """Runs in a fresh process: bytes the loaded, queried indexes add to the resident set."""
    import bm25s
    from annoy import AnnoyIndex

    from realm.retriever.analyzer import Analyzer
    from realm.retriever.collection import Collection
    from realm.retriever.search import SearchQuery

    queries: list[str] = json.loads((folder / "queries.json").read_text(encoding="utf-8"))
    analyzer = Analyzer("en")
    encoder = HashingEncoder()
    baseline = _resident_bytes()
    if side == "realm":
        collection = Collection.open(folder / "realm", _load_encoder)
        for query in queries:
            collection.search(SearchQuery(text=query, k=10, mode="hybrid"))
    else:
        model = bm25s.BM25.load(str(folder / "bm25s"))
        annoy = AnnoyIndex(DIMENSION, "angular")
        annoy.load(str(folder / "peer.ann"))
        for query in queries:
            model.retrieve([analyzer.tokens(query)], k=10, show_progress=False)
            annoy.get_nns_by_vector(encoder.encode([query])[0], 100, search_k=10_000)
    return _resident_bytes() - baseline


def _measure_in_fresh_process(side: str, folder: Path) -> int:
    result = subprocess.run(
        [sys.executable, "-m", "bench.memory_bench", side, str(folder)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(result.stdout.strip().splitlines()[-1])


def run(quick: bool) -> list[Row]:
    passages = 10_000 if quick else 100_000
    with tempfile.TemporaryDirectory(prefix="realm-memory-") as tmp:
        folder = Path(tmp)
        build(folder, passages)
        realm = _measure_in_fresh_process("realm", folder)
        peer = _measure_in_fresh_process("peer", folder)
    scale = 100_000 / passages
    return [
        Row(
            f"resident memory per 100k passages ({passages:,} loaded and queried)",
            realm * scale / 2**20,
            "bm25s + Annoy alone",
            peer * scale / 2**20,
            "MiB",
            1.5,
            higher_is_better=False,
        )
    ]


if __name__ == "__main__":
    print(measure(sys.argv[1], Path(sys.argv[2])))  # the parent process reads this number
