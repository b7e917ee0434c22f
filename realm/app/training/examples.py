"""Training examples for the embedding model: (query, positive passage, hard negative passage).

The loss (MultipleNegativesRankingLoss) also uses every other passage of a batch as a negative;
the hard negative is a passage BM25 ranks high for the query that is not relevant, the kind of
near miss the dense index must learn to rank below the answer.
"""

from dataclasses import dataclass

import numpy as np

from realm.app.beir import Qrels
from realm.app.training.corpus import CollectionPassages, TrainingInputError

# Hard negatives are drawn at random from BM25's non-relevant passages ranked NEGATIVE_SKIP+1 to
# NEGATIVE_SKIP+NEGATIVE_POOL. The very first ones are too often unjudged answers (judgements are
# incomplete). On Cranfield (docs/training.md, 3 epochs) ranks 11-30 trained to 0.405 nDCG@10
# and no hard negative to 0.403; ranks 1-10 did worse than both (0.392 in 2 epochs).
NEGATIVE_SKIP = 10
NEGATIVE_POOL = 20
# Fewer examples than this cannot teach a model anything but noise.
MIN_EXAMPLES = 32


@dataclass(frozen=True, slots=True)
class Triplet:
    query: str
    positive: str
    negative: str


@dataclass(frozen=True, slots=True)
class LabelledExamples:
    triplets: list[Triplet]
    queries: int
    # Relevant documents the qrels name that the collection does not hold.
    missing_documents: int


def hard_negative(
    passages: CollectionPassages, query: str, excluded_docs: set[str], rng: np.random.Generator
) -> str:
    """A passage BM25 ranks high for ``query`` from none of ``excluded_docs``; a random passage
    when BM25 finds none."""
    ranked = passages.bm25_top(query, NEGATIVE_SKIP + NEGATIVE_POOL + 4 * len(excluded_docs))
    candidates = [int(row) for row in ranked if passages.doc_ids[row] not in excluded_docs]
    # A small collection may have no passage that far down: then the best ones.
    pool = candidates[NEGATIVE_SKIP:][:NEGATIVE_POOL] or candidates[:NEGATIVE_POOL]
    if not pool:
        pool = [
            row for row in range(len(passages.texts)) if passages.doc_ids[row] not in excluded_docs
        ]
    return passages.texts[pool[int(rng.integers(len(pool)))]] if pool else ""


def labelled_examples(
    passages: CollectionPassages, queries: dict[str, str], qrels: Qrels, seed: int
) -> LabelledExamples:
    """One triplet per (query, relevant document) pair. The positive is the document's passage
    that BM25 scores best for the query (its only one for short documents)."""
    rng = np.random.default_rng(seed)
    triplets: list[Triplet] = []
    missing = 0
    used_queries = 0
    for query_id in sorted(qrels):
        query = queries.get(query_id)
        if query is None:
            raise TrainingInputError(
                f"--qrels names query {query_id!r}, which --queries does not hold; give the "
                "queries file of the same data set"
            )
        relevant = set(qrels[query_id])
        scores = passages.bm25.scores(passages.analyzer.tokens(query))
        found = False
        for doc_id in sorted(relevant):
            rows = passages.doc_rows.get(doc_id)
            if not rows:
                missing += 1
                continue
            positive = rows[int(np.argmax(scores[rows]))]
            negative = hard_negative(passages, query, relevant, rng)
            triplets.append(Triplet(query, passages.texts[positive], negative))
            found = True
        used_queries += found
    if len(triplets) < MIN_EXAMPLES:
        raise TrainingInputError(
            f"only {len(triplets)} (query, relevant passage) pairs match collection "
            f"{passages.name!r} ({missing} relevant documents are not in it); at least "
            f"{MIN_EXAMPLES} are needed: check that --qrels names documents of this collection"
        )
    return LabelledExamples(triplets, used_queries, missing)
