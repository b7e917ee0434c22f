"""Training examples with no labels: the generator model writes a query for each sampled passage,
and a query is kept only when BM25 retrieves its passage back among the first few (InPars'
round-trip filter). A query the passage does not answer, or one so vague that anything matches,
fails that test and would teach the model noise.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from realm.app.training.corpus import CollectionPassages, TrainingInputError
from realm.app.training.examples import MIN_EXAMPLES, Triplet, hard_negative
from realm.app.training.query_writer import QueryWriter

# The source passage must be among BM25's first this many for its query.
ROUND_TRIP_K = 10
# Queries of fewer words are too vague to teach anything ("the passage", "wing").
MIN_QUERY_WORDS = 3


@dataclass(frozen=True, slots=True)
class SyntheticExamples:
    triplets: list[Triplet]
    # Passages a query was written for (kept or not).
    sampled: int

    @property
    def kept(self) -> int:
        return len(self.triplets)


def sample_rows(passages: CollectionPassages, limit: int, seed: int) -> list[int]:
    """``limit`` passage rows drawn with ``seed`` (every row when the collection is smaller)."""
    rows = list(range(len(passages.texts)))
    if limit >= len(rows):
        return rows
    chosen = np.random.default_rng(seed).choice(len(rows), size=limit, replace=False)
    return sorted(int(row) for row in chosen)


def synthetic_examples(
    passages: CollectionPassages,
    writer: QueryWriter,
    limit: int,
    seed: int,
    advance: Callable[[int], None] = lambda n: None,
) -> SyntheticExamples:
    rows = sample_rows(passages, limit, seed)
    queries = writer.write([passages.texts[row] for row in rows], advance)
    rng = np.random.default_rng(seed)
    triplets: list[Triplet] = []
    for row, query in zip(rows, queries, strict=True):
        kept = len(query.split()) >= MIN_QUERY_WORDS and row in passages.bm25_top(
            query, ROUND_TRIP_K
        )
        if kept:
            source = {passages.doc_ids[row]}
            negative = hard_negative(passages, query, source, rng)
            triplets.append(Triplet(query, passages.texts[row], negative))
    if len(triplets) < MIN_EXAMPLES:
        raise TrainingInputError(
            f"only {len(triplets)} of {len(rows)} synthetic queries found their passage again "
            f"(at least {MIN_EXAMPLES} are needed); sample more passages with "
            "--synthetic-passages, or train with labelled --queries and --qrels"
        )
    return SyntheticExamples(triplets, len(rows))
