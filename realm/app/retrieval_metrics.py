"""Retrieval metrics computed by trec_eval itself (through pytrec_eval), not re-implemented.

``ndcg@10`` uses graded gains (``ndcg_cut_10``); ``recall@100`` counts every judged document as
relevant; ``mrr@10`` is trec_eval's ``recip_rank`` over each run cut to its first 10 documents.
"""

from statistics import fmean

import pytrec_eval

from realm.app.beir import Qrels

Run = dict[str, dict[str, float]]


def evaluate(qrels: Qrels, run: Run) -> dict[str, float]:
    """Mean ``ndcg@10``, ``recall@100`` and ``mrr@10`` over the judged queries of ``run``.

    A judged query missing from ``run`` counts as zero, as trec_eval's ``-c`` would.
    """
    judged = {q: docs for q, docs in qrels.items() if docs}
    full = {q: run.get(q, {}) for q in judged}
    cut10 = {
        q: dict(sorted(docs.items(), key=lambda kv: (-kv[1], kv[0]))[:10])
        for q, docs in full.items()
    }
    per_query = pytrec_eval.RelevanceEvaluator(judged, {"ndcg_cut_10", "recall_100"}).evaluate(full)
    reciprocal = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}).evaluate(cut10)

    def mean(measures: dict[str, dict[str, float]], name: str) -> float:
        return fmean(measures.get(q, {}).get(name, 0.0) for q in judged)

    return {
        "ndcg@10": mean(per_query, "ndcg_cut_10"),
        "recall@100": mean(per_query, "recall_100"),
        "mrr@10": mean(reciprocal, "recip_rank"),
        "queries": float(len(judged)),
    }
