"""Retrieval quality on Cranfield through the real server and CLI (skipped without ../shared).

The bars from the retriever issue: ``bm25`` scores at least what bm25s scores with the same k1, b
and tokens, and ``hybrid`` (the default mode) scores at least the better of ``bm25`` and ``dense``.
"""

import json
from pathlib import Path

import bm25s
import pytest

from realm.app.beir import read_corpus, read_qrels, read_queries
from realm.app.retrieval_metrics import evaluate
from realm.retriever.analyzer import Analyzer
from realm.retriever.chunker import ChunkerConfig, chunk
from tests.servers import RetrieverProcess
from tests.test_cli import realm

# Indexing Cranfield encodes ~2,200 passages on the CPU: about two minutes on 2 cores.
pytestmark = [pytest.mark.quality, pytest.mark.slow, pytest.mark.timeout(1800)]


def _bm25s_ndcg(cranfield: Path) -> float:
    """bm25s (lucene, k1=1.2, b=0.75) over exactly the passages and tokens ReaLM indexes."""
    analyzer = Analyzer("en")
    owners: list[str] = []
    tokens: list[list[str]] = []
    for document in read_corpus(cranfield / "corpus.jsonl"):
        for span in chunk(document.text, ChunkerConfig()):
            text = document.text[span.start : span.end]
            tokens.append(analyzer.tokens(f"{document.title}\n{text}" if document.title else text))
            owners.append(document.doc_id)
    model = bm25s.BM25(method="lucene", k1=1.2, b=0.75)
    model.index(tokens, show_progress=False)
    queries = read_queries(cranfield / "queries.jsonl")
    qrels = read_qrels(cranfield / "qrels" / "test.tsv")
    run: dict[str, dict[str, float]] = {}
    for query_id in qrels:
        query = [t for t in analyzer.tokens(queries[query_id]) if t in model.vocab_dict]
        rows, scores = (
            model.retrieve([query], k=500, show_progress=False) if query else ([[]], [[]])
        )
        best: dict[str, float] = {}
        for row, score in zip(rows[0], scores[0], strict=True):
            if score > 0:
                best.setdefault(owners[int(row)], float(score))
        run[query_id] = dict(list(best.items())[:100])
    return evaluate(qrels, run)["ndcg@10"]


def test_cranfield_bm25_matches_bm25s_and_hybrid_beats_both(
    cranfield: Path, retriever: RetrieverProcess, tmp_path: Path
) -> None:
    metrics = {}
    for mode in ("bm25", "dense", "hybrid"):
        out = tmp_path / f"{mode}.json"
        result = realm(
            "eval",
            "retrieval",
            "--beir",
            str(cranfield),
            "--collection",
            "cranfield",
            "--mode",
            mode,
            "--json",
            str(out),
            "--target",
            retriever.target,
            timeout=1500,
        )
        assert result.returncode == 0, result.stderr
        metrics[mode] = json.loads(out.read_text())
    peer = _bm25s_ndcg(cranfield)
    print(
        json.dumps({"realm": metrics, "bm25s_ndcg@10": peer}, indent=2)
    )  # the figures for docs/quality.md
    assert metrics["bm25"]["queries"] == 225
    assert metrics["bm25"]["ndcg@10"] >= peer - 1e-9
    assert metrics["hybrid"]["ndcg@10"] >= max(
        metrics["bm25"]["ndcg@10"], metrics["dense"]["ndcg@10"]
    )
    assert (
        metrics["hybrid"]["recall@100"]
        >= max(metrics["bm25"]["recall@100"], metrics["dense"]["recall@100"]) - 0.01
    )
