"""Training examples for the embedding model: (query, positive passage, hard negative passage).

The loss (MultipleNegativesRankingLoss) also uses every other passage of a batch as a negative;
the hard negative is a passage BM25 ranks high for the query that is not relevant, the kind of
near miss the dense index must learn to rank below the answer.
"""

from dataclasses import dataclass

import numpy as np

from realm.app.beir import Qrels
from realm.app.training.corpus import CollectionPassages, TrainingInputError

# Hard negatives are drawn from this many of BM25's best non-relevant passages. Its very first
# ones are often unjudged answers (judgements are incomplete), so one is drawn at random rather
# than always the first.
NEGATIVE_POOL = 10
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
    """A passage BM25 ranks among the best for ``query`` from none of ``excluded_docs``; a
    random passage when BM25 finds none."""
    ranked = passages.bm25_top(query, NEGATIVE_POOL + 4 * len(excluded_docs) + 4)
    pool = [int(row) for row in ranked if passages.doc_ids[row] not in excluded_docs]
    pool = pool[:NEGATIVE_POOL]
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
