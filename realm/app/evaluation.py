"""Runs a BEIR query set against a retriever and scores it with trec_eval's measures."""

from itertools import islice
from pathlib import Path

from realm.app.beir import read_qrels, read_queries
from realm.app.retrieval_metrics import Run, evaluate
from realm.client import Mode, RetrieverClient

PASSAGES_PER_QUERY = 500  # enough passages that the best 100 documents are almost always found
DOCUMENTS_PER_QUERY = 100
BATCH = 16


def evaluate_retrieval(
    client: RetrieverClient,
    collection: str,
    beir: Path,
    mode: Mode,
    dense_weight: float | None = None,
) -> dict[str, float]:
    """Ranks documents by their best passage and returns ``ndcg@10``, ``recall@100``, ``mrr@10``.
    ``dense_weight`` overrides the collection's hybrid default."""
    queries = read_queries(beir / "queries.jsonl")
    qrels = read_qrels(beir / "qrels" / "test.tsv")
    judged = [q for q in qrels if q in queries]
    run: Run = {}
    iterator = iter(judged)
    while batch := list(islice(iterator, BATCH)):
        texts = [queries[q] for q in batch]
        ranked = client.batch_search(
            collection, texts, k=PASSAGES_PER_QUERY, mode=mode, dense_weight=dense_weight
        )
        for query_id, hits in zip(batch, ranked, strict=True):
            best: dict[str, float] = {}
            for hit in hits:  # best first, so the first passage of a document is its best
                best.setdefault(hit.doc_id, hit.score)
            run[query_id] = dict(islice(best.items(), DOCUMENTS_PER_QUERY))
    return evaluate({q: qrels[q] for q in judged}, run)
