"""The mutable tail over a generation, and consistent read views of generation + tail.

Writes since the last generation live here: new passages (their vectors, term counts, lengths
and metadata) and tombstones for generation rows that were replaced or deleted. One writer
appends; readers never lock. Every change is stamped with its log sequence and a reader works
on a ``View`` — the generation, the tail and the counts as of one sequence — so a search sees
either all of a write or none of it, also while the writer appends the next one.

Ranking over a view is exact for the live documents: BM25 uses the live collection's
statistics (passage count, average length, document frequencies over generation and tail,
tombstones excluded), so scores equal those of a fresh build of the same documents. A shard of
a sharded collection scores with the sums over every shard instead (``term_statistics`` is
this view's part of them).
"""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

from realm.retriever.bm25 import (
    BM25Index,
    BM25Params,
    CorpusStatistics,
    contributions,
    idf_of,
)
from realm.retriever.generation import Generation
from realm.retriever.topk import FloatArray, IntArray, top_k

ALIVE = np.iinfo(np.int64).max
ScalarT = TypeVar("ScalarT", bound=np.generic)


class Growing(Generic[ScalarT]):
    """An append-only array that readers slice without locks.

    Growth copies into a new buffer before swapping the reference, so a reader holding either
    buffer sees every row that existed when its view was taken."""

    def __init__(self, dtype: type[ScalarT], width: int = 0, capacity: int = 16) -> None:
        self._shape: tuple[int, ...] = (width,) if width else ()
        self.data: npt.NDArray[ScalarT] = np.empty((capacity, *self._shape), dtype=dtype)
        self.size = 0

    def extend(self, rows: npt.ArrayLike) -> None:
        values = np.asarray(rows, dtype=self.data.dtype).reshape(-1, *self._shape)
        needed = self.size + len(values)
        if needed > len(self.data):
            grown = np.empty((max(needed, 2 * len(self.data)), *self._shape), self.data.dtype)
            grown[: self.size] = self.data[: self.size]
            grown[self.size : needed] = values
            self.data = grown
        else:
            self.data[self.size : needed] = values
        self.size = needed

    def head(self, count: int) -> npt.NDArray[ScalarT]:
        return self.data[:count]


class Tail:
    """Everything written since ``generation`` was built. Mutated only under the write lock."""

    def __init__(self, dimension: int) -> None:
        self.pids: Growing[np.int64] = Growing(np.int64)
        self.vectors: Growing[np.float32] = Growing(np.float32, dimension)
        self.lengths: Growing[np.int32] = Growing(np.int32)
        self.dead_at: Growing[np.int64] = Growing(np.int64)
        self.metadata: list[dict[str, str]] = []
        self.term_counts: list[Counter[str]] = []
        # term -> rows of (tail row, frequency), appended in row order; numpy so that a query
        # slices them instead of converting Python lists
        self.postings: dict[str, Growing[np.int64]] = {}
        self.row_of: dict[int, int] = {}
        # Generation rows killed since the build, in the order (and so sequence) they died.
        self.dead_generation_rows: Growing[np.int64] = Growing(np.int64)

    @property
    def rows(self) -> int:
        return self.pids.size

    def append(
        self,
        pids: list[int],
        vectors: FloatArray,
        term_counts: list[Counter[str]],
        metadata: list[dict[str, str]],
        dead_at: npt.ArrayLike | None = None,
    ) -> None:
        first = self.rows
        batch: dict[str, list[tuple[int, int]]] = {}
        for offset, counts in enumerate(term_counts):
            for term, frequency in counts.items():
                batch.setdefault(term, []).append((first + offset, frequency))
        for term, pairs in batch.items():
            postings = self.postings.get(term)
            if postings is None:
                postings = self.postings[term] = Growing(np.int64, width=2, capacity=len(pairs))
            postings.extend(pairs)
        self.term_counts.extend(term_counts)
        self.metadata.extend(metadata)
        self.row_of.update((pid, first + offset) for offset, pid in enumerate(pids))
        self.vectors.extend(vectors)
        self.lengths.extend([sum(c.values()) for c in term_counts])
        self.dead_at.extend(np.full(len(pids), ALIVE) if dead_at is None else dead_at)
        self.pids.extend(pids)  # last: the row count readers rely on grows after its data


@dataclass(frozen=True, slots=True)
class Change:
    """One committed write as the live index sees it: the passages it killed, the passages it
    added (with their vectors, term counts and metadata, in pid order) and the documents it
    added minus those it deleted."""

    killed_pids: Sequence[int]
    new_pids: Sequence[int]
    vectors: FloatArray
    term_counts: list[Counter[str]]
    metadata: list[dict[str, str]]
    documents_added: int


@dataclass(frozen=True, slots=True)
class View:
    """The index as of log sequence ``sequence``: rows ``[0, n)`` are generation rows, rows
    ``[n, n + tail_rows)`` tail rows."""

    generation: Generation
    tail: Tail
    sequence: int
    tail_rows: int
    dead_generation_count: int
    passages: int
    total_length: int
    documents: int

    @classmethod
    def of_generation(cls, generation: Generation, documents: int) -> "View":
        """``generation`` with nothing written since: no tail rows, no tombstones."""
        return cls(
            generation,
            Tail(generation.encoder.dimension),
            generation.last_sequence,
            0,
            0,
            generation.n_rows,
            int(generation.bm25.doc_lengths.sum()),
            documents,
        )

    def apply(self, change: "Change") -> "View":
        """The view one committed write later: rows it killed become tombstones (generation
        rows) or dead at the new sequence (tail rows), its passages join the tail. The tail is
        shared with earlier views, which keep reading only their own rows; the caller holds the
        write lock."""
        tail = self.tail
        sequence = self.sequence + 1
        passages, total_length = self.passages, self.total_length
        killed = np.asarray(change.killed_pids, dtype=np.int64)
        if killed.size:
            generation = self.generation
            in_generation = killed <= (generation.pids[-1] if generation.n_rows else -1)
            generation_rows = generation.rows_of(killed[in_generation])
            tail_rows = [tail.row_of[int(pid)] for pid in killed[~in_generation]]
            total_length -= int(generation.bm25.doc_lengths[generation_rows].sum())
            total_length -= int(tail.lengths.head(tail.rows)[tail_rows].sum())
            tail.dead_at.data[tail_rows] = sequence
            tail.dead_generation_rows.extend(generation_rows)
            passages -= killed.size
        if change.new_pids:
            tail.append(list(change.new_pids), change.vectors, change.term_counts, change.metadata)
            passages += len(change.new_pids)
            total_length += sum(sum(c.values()) for c in change.term_counts)
        return View(
            self.generation,
            tail,
            sequence,
            tail.rows,
            tail.dead_generation_rows.size,
            passages,
            total_length,
            self.documents + change.documents_added,
        )

    @property
    def pristine(self) -> bool:
        """Nothing changed since the generation: its precomputed scores are exact."""
        return self.tail_rows == 0 and self.dead_generation_count == 0

    @property
    def n_rows(self) -> int:
        return self.generation.n_rows + self.tail_rows

    @property
    def changes(self) -> int:
        """Tail passages plus tombstones: what the next generation build folds in."""
        return self.tail_rows + self.dead_generation_count

    def dead_generation_rows(self) -> IntArray:
        return self.tail.dead_generation_rows.head(self.dead_generation_count)

    def tail_alive(self) -> npt.NDArray[np.bool_]:
        return self.tail.dead_at.head(self.tail_rows) > self.sequence

    def live_pids(self) -> npt.NDArray[np.int64]:
        """Passage ids alive in this view: the generation's, then the tail's, as a build folds
        them."""
        tail_pids = self.tail.pids.head(self.tail_rows)
        return np.concatenate(
            [self.generation.pids[self.generation_alive()], tail_pids[self.tail_alive()]]
        ).astype(np.int64)

    def generation_alive(self) -> npt.NDArray[np.bool_]:
        alive = np.ones(self.generation.n_rows, dtype=bool)
        alive[self.dead_generation_rows()] = False
        return alive

    # ------------------------------------------------------------------ row data
    def pids(self, rows: IntArray) -> npt.NDArray[np.int64]:
        n = self.generation.n_rows
        in_generation = rows < n
        out = np.empty(len(rows), dtype=np.int64)
        out[in_generation] = self.generation.pids[rows[in_generation]]
        out[~in_generation] = self.tail.pids.head(self.tail_rows)[rows[~in_generation] - n]
        return out

    def vectors(self, rows: IntArray) -> FloatArray:
        n = self.generation.n_rows
        in_generation = rows < n
        out = np.empty((len(rows), self.generation.dense.dimension), dtype=np.float32)
        out[in_generation] = self.generation.dense.vectors[rows[in_generation]]
        out[~in_generation] = self.tail.vectors.head(self.tail_rows)[rows[~in_generation] - n]
        return out

    # ------------------------------------------------------------------ ranking
    def allowed_rows(self, conditions: tuple[tuple[str, str], ...]) -> IntArray:
        """Live rows whose metadata matches every condition."""
        generation_rows = self.generation.allowed_rows(conditions)
        dead = self.dead_generation_rows()
        if dead.size:
            generation_rows = generation_rows[~np.isin(generation_rows, dead)]
        alive = self.tail_alive()
        tail_rows = [
            row
            for row in np.flatnonzero(alive)
            if all(self.tail.metadata[row].get(key) == value for key, value in conditions)
        ]
        return np.concatenate(
            [generation_rows, np.asarray(tail_rows, dtype=np.int64) + self.generation.n_rows]
        ).astype(np.int64)

    def term_statistics(self, tokens: Sequence[str]) -> CorpusStatistics:
        """This view's BM25 statistics for ``tokens``: what a shard contributes to the sums a
        sharded collection scores every shard with."""
        dead, alive = self._dead_and_alive()
        frequencies: dict[str, int] = {}
        for term in dict.fromkeys(tokens):
            generation_rows, _, tail_rows, _ = self._live_postings(term, dead, alive)
            frequencies[term] = generation_rows.size + tail_rows.size
        return CorpusStatistics(self.passages, self.total_length, frequencies)

    def bm25_scores(
        self, tokens: list[str], params: BM25Params, statistics: CorpusStatistics | None = None
    ) -> FloatArray:
        """BM25 of every row; dead rows score 0. Scored with ``statistics`` (a sharded
        collection's sums over its shards) when given, else with this view's own."""
        bm25 = self.generation.bm25
        if self.pristine and statistics is None:
            return bm25.scores(tokens)
        if statistics is None:
            statistics = CorpusStatistics(self.passages, self.total_length, {})
        n = self.generation.n_rows
        dead, alive = self._dead_and_alive()
        tail_lengths = self.tail.lengths.head(self.tail_rows)
        avgdl = statistics.average_length
        rows_parts: list[IntArray] = []
        weight_parts: list[FloatArray] = []
        for term, times in Counter(tokens).items():
            generation_rows, generation_tf, tail_rows, tail_tf = self._live_postings(
                term, dead, alive
            )
            frequency = generation_rows.size + tail_rows.size
            if not frequency:
                continue
            lengths = np.concatenate([bm25.doc_lengths[generation_rows], tail_lengths[tail_rows]])
            weights = contributions(
                idf_of(statistics.document_frequencies.get(term, frequency), statistics.passages),
                np.concatenate([generation_tf, tail_tf]),
                lengths,
                avgdl,
                params,
            )
            rows_parts.append(np.concatenate([generation_rows, tail_rows + n]))
            weight_parts.append(weights * np.float32(times))
        if not rows_parts:
            return np.zeros(self.n_rows, dtype=np.float32)
        return np.bincount(
            np.concatenate(rows_parts),
            weights=np.concatenate(weight_parts),
            minlength=self.n_rows,
        ).astype(np.float32)

    def _dead_and_alive(self) -> tuple[IntArray, npt.NDArray[np.bool_] | None]:
        """Tombstoned generation rows, and which tail rows live (None: all of them)."""
        tail_alive = self.tail_alive()
        return self.dead_generation_rows(), None if tail_alive.all() else tail_alive

    def _live_postings(
        self, term: str, dead: IntArray, alive: npt.NDArray[np.bool_] | None
    ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32], IntArray, npt.NDArray[np.int64]]:
        """The live rows holding ``term`` with its frequencies: generation rows less
        tombstones, then alive tail rows (numbered from 0 within the tail)."""
        generation_rows, generation_tf = self.generation.bm25.postings(term)
        if dead.size and generation_rows.size:
            keep = ~np.isin(generation_rows, dead)
            generation_rows, generation_tf = generation_rows[keep], generation_tf[keep]
        tail_rows, tail_tf = self._tail_postings(term, alive)
        return generation_rows, generation_tf, tail_rows, tail_tf

    def _tail_postings(
        self, term: str, alive: npt.NDArray[np.bool_] | None
    ) -> tuple[IntArray, npt.NDArray[np.int64]]:
        """Alive tail rows holding ``term`` and its frequencies; ``alive`` None means all are."""
        postings = self.tail.postings.get(term)
        if postings is None:
            empty = np.empty(0, dtype=np.int64)
            return empty, empty
        pairs = postings.head(postings.size)
        if pairs.size and pairs[-1, 0] >= self.tail_rows:
            # The writer appended rows after our view; rows are in order, so cut there.
            pairs = pairs[: np.searchsorted(pairs[:, 0], self.tail_rows)]
        rows, frequencies = pairs[:, 0], pairs[:, 1]
        if alive is not None:
            keep = alive[rows]
            rows, frequencies = rows[keep], frequencies[keep]
        return rows, frequencies

    def dense_top(
        self, vector: FloatArray, k: int, allowed: IntArray | None
    ) -> tuple[IntArray, FloatArray]:
        """Top-``k`` live rows by cosine: Annoy (or exact) over the generation, exact over the
        tail. Tombstoned generation rows are over-fetched and dropped before the cut."""
        n = self.generation.n_rows
        dense = self.generation.dense
        if allowed is not None:
            generation_rows, generation_scores = dense.search(vector, k, allowed[allowed < n])
            tail_rows = allowed[allowed >= n] - n
        else:
            dead = self.dead_generation_rows()
            generation_rows, generation_scores = dense.search(vector, min(k + dead.size, n))
            if dead.size:
                keep = ~np.isin(generation_rows, dead)
                generation_rows, generation_scores = generation_rows[keep], generation_scores[keep]
            tail_rows = np.flatnonzero(self.tail_alive())
        if tail_rows.size == 0:
            return generation_rows[:k], generation_scores[:k]
        tail_scores = self.tail.vectors.head(self.tail_rows)[tail_rows] @ vector
        rows = np.concatenate([generation_rows, tail_rows + n])
        scores = np.concatenate([generation_scores, tail_scores.astype(np.float32)])
        best, best_scores = top_k(scores, k)
        return rows[best], best_scores


@dataclass(frozen=True, slots=True)
class Folded:
    """The live passages of a view as the arrays of the next generation."""

    pids: npt.NDArray[np.int64]
    bm25: BM25Index
    vectors: FloatArray


def fold(view: View, params: BM25Params) -> Folded:
    """Merges generation and tail into one index without re-analysing or re-encoding text.

    Postings of dead rows are dropped, rows renumbered, tail postings appended, and the
    contributions recomputed with the new statistics by ``BM25Index.from_postings``."""
    generation, tail = view.generation, view.tail
    bm25 = generation.bm25
    generation_alive = view.generation_alive()
    tail_alive = view.tail_alive()
    kept_generation = int(generation_alive.sum())
    new_row = np.cumsum(generation_alive) - 1
    matrix = bm25.matrix
    posting_terms = np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(matrix.indptr))
    keep = generation_alive[matrix.indices]
    terms_parts = [posting_terms[keep]]
    rows_parts = [new_row[matrix.indices[keep]]]
    tf_parts = [bm25.term_freqs[keep].astype(np.int64)]
    vocab = dict(bm25.vocab)
    new_tail_row = np.cumsum(tail_alive) - 1 + kept_generation
    for term, postings in tail.postings.items():
        pairs = postings.head(postings.size)
        rows, frequencies = pairs[:, 0], pairs[:, 1]
        inside = rows < view.tail_rows
        rows, frequencies = rows[inside], frequencies[inside]
        alive = tail_alive[rows]
        if not alive.any():
            continue
        term_id = vocab.setdefault(term, len(vocab))
        terms_parts.append(np.full(int(alive.sum()), term_id, dtype=np.int64))
        rows_parts.append(new_tail_row[rows[alive]])
        tf_parts.append(frequencies[alive])
    terms = np.concatenate(terms_parts)
    rows = np.concatenate(rows_parts)
    tf = np.concatenate(tf_parts)
    # Terms whose every posting died leave the vocabulary, as in a fresh build.
    used = np.zeros(len(vocab), dtype=bool)
    used[terms] = True
    remap = np.cumsum(used) - 1
    names = sorted(vocab, key=vocab.__getitem__)
    new_vocab = {name: int(remap[i]) for i, name in enumerate(names) if used[i]}
    terms = remap[terms]
    n_rows = kept_generation + int(tail_alive.sum())
    order = np.argsort(terms * max(n_rows, 1) + rows, kind="stable")
    lengths = np.concatenate(
        [bm25.doc_lengths[generation_alive], view.tail.lengths.head(view.tail_rows)[tail_alive]]
    ).astype(np.int32)
    pids = view.live_pids()
    vectors = np.concatenate(
        [
            np.asarray(generation.dense.vectors[generation_alive], dtype=np.float32),
            tail.vectors.head(view.tail_rows)[tail_alive],
        ]
    )
    merged = BM25Index.from_postings(
        new_vocab, terms[order], rows[order], tf[order], lengths, bm25.params
    )
    return Folded(pids, merged, vectors)


def carry_over(built_from: View, current: View, generation: Generation) -> View:
    """The view after swapping in ``generation`` (built from ``built_from``): writes that came
    after the build started move to a fresh tail over the new generation."""
    old = current.tail
    tail = Tail(generation.dense.dimension)
    later = slice(built_from.tail_rows, current.tail_rows)
    if current.tail_rows > built_from.tail_rows:
        tail.append(
            old.pids.head(current.tail_rows)[later].tolist(),
            old.vectors.head(current.tail_rows)[later],
            old.term_counts[later],
            old.metadata[later],
            old.dead_at.head(current.tail_rows)[later],
        )
    # Rows alive when the build read them but killed since are tombstones in the new generation.
    dead_at = old.dead_at.head(built_from.tail_rows)
    killed_tail = old.pids.head(built_from.tail_rows)[
        (dead_at > built_from.sequence) & (dead_at != ALIVE)
    ]
    killed_generation = built_from.generation.pids[
        old.dead_generation_rows.head(current.dead_generation_count)[
            built_from.dead_generation_count :
        ]
    ]
    killed = np.sort(np.concatenate([killed_tail, killed_generation]))
    tail.dead_generation_rows.extend(generation.rows_of(killed))
    return View(
        generation,
        tail,
        current.sequence,
        tail.rows,
        tail.dead_generation_rows.size,
        current.passages,
        current.total_length,
        current.documents,
    )
