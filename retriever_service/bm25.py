"""Lucene's BM25 over a term-major sparse matrix of precomputed score contributions.

``score(q, d) = Σ_{t∈q} IDF(t) · tf·(k1+1) / (tf + k1·(1 − b + b·|d|/avgdl))`` with
``IDF(t) = ln(1 + (N − df + 0.5) / (df + 0.5))``. Every (term, passage) contribution is computed
once at build time, so a query is a sum of a few matrix rows: no per-query arithmetic over the
corpus beyond adding postings. A query term repeated n times counts n times, as in Lucene's
BooleanQuery and bm25s.
"""

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from realm.retriever.topk import FloatArray, IntArray

_FILES = (
    "bm25_data.npy",
    "bm25_indices.npy",
    "bm25_indptr.npy",
    "bm25_doc_lengths.npy",
    "bm25_term_freqs.npy",
)
VOCAB_FILE = "bm25_vocab.json"
FILES: tuple[str, ...] = (*_FILES, VOCAB_FILE)


# Past a few units k1 makes term frequency count linearly; 10 is far beyond any tuned value.
MAX_K1 = 10.0


@dataclass(frozen=True, slots=True)
class BM25Params:
    """Saturation ``k1`` and length normalisation ``b``; Lucene's defaults."""

    k1: float = 1.2
    b: float = 0.75

    def __post_init__(self) -> None:
        if not 0.0 <= self.k1 <= MAX_K1:  # also refuses NaN
            raise ValueError(f"k1={self.k1} must be in [0, {MAX_K1}]; Lucene uses 1.2")
        if not 0.0 <= self.b <= 1.0:  # also refuses NaN
            raise ValueError(f"b={self.b} must be in [0, 1]; Lucene uses 0.75")


class BM25Index:
    """An immutable BM25 index over ``n_docs`` token lists (rows are passage positions).

    Besides the precomputed contributions it keeps each posting's term frequency, so the same
    postings can be re-scored with other collection statistics (a generation plus its mutable
    tail) and merged into the next generation without re-analysing any text.
    """

    def __init__(
        self,
        vocab: dict[str, int],
        matrix: sp.csr_matrix,
        term_freqs: npt.NDArray[np.int32],
        doc_lengths: npt.NDArray[np.int32],
        params: BM25Params,
    ) -> None:
        self.vocab = vocab
        self.matrix = matrix
        self.term_freqs = term_freqs
        self.doc_lengths = doc_lengths
        self.params = params

    @property
    def n_docs(self) -> int:
        return int(self.matrix.shape[1])

    @classmethod
    def build(cls, corpus_tokens: Sequence[Sequence[str]], params: BM25Params) -> "BM25Index":
        """Indexes token lists; the work is one pass in Python for term ids, the rest vectorised."""
        vocab: dict[str, int] = {}
        term_ids: list[int] = []
        doc_lengths = np.fromiter(
            (len(d) for d in corpus_tokens), dtype=np.int32, count=len(corpus_tokens)
        )
        for tokens in corpus_tokens:
            term_ids.extend(vocab.setdefault(t, len(vocab)) for t in tokens)
        n_docs = len(corpus_tokens)
        terms = np.asarray(term_ids, dtype=np.int64)
        docs = np.repeat(np.arange(n_docs, dtype=np.int64), doc_lengths)
        # Sorting (term, doc) keys yields postings in CSR order with their term frequencies.
        keys, tf = np.unique(terms * max(n_docs, 1) + docs, return_counts=True)
        post_terms, post_docs = np.divmod(keys, max(n_docs, 1))
        return cls.from_postings(vocab, post_terms, post_docs, tf, doc_lengths, params)

    @classmethod
    def from_postings(
        cls,
        vocab: dict[str, int],
        terms: IntArray,
        docs: IntArray,
        tf: npt.NDArray[np.integer],
        doc_lengths: npt.NDArray[np.int32],
        params: BM25Params,
    ) -> "BM25Index":
        """Builds from postings sorted by (term, doc); every term in ``vocab`` has postings."""
        n_docs, n_terms = len(doc_lengths), len(vocab)
        df = np.bincount(terms, minlength=n_terms)
        idf = np.log1p((n_docs - df + 0.5) / (df + 0.5))
        avgdl = float(doc_lengths.mean()) if n_docs and doc_lengths.sum() else 1.0
        weights = contributions(idf[terms], tf, doc_lengths[docs], avgdl, params)
        indptr = np.zeros(n_terms + 1, dtype=np.int64)
        np.cumsum(df, out=indptr[1:])
        matrix = sp.csr_matrix((weights, docs.astype(np.int32), indptr), shape=(n_terms, n_docs))
        return cls(vocab, matrix, np.asarray(tf, dtype=np.int32), doc_lengths, params)

    def postings(self, term: str) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]]:
        """Rows containing ``term`` and the term's frequency in each."""
        term_id = self.vocab.get(term)
        if term_id is None:
            empty = np.empty(0, dtype=np.int32)
            return empty, empty
        span = slice(self.matrix.indptr[term_id], self.matrix.indptr[term_id + 1])
        return self.matrix.indices[span], self.term_freqs[span]

    def scores(self, query_tokens: Sequence[str]) -> FloatArray:
        """BM25 score of every row for the query; rows sharing no term score exactly 0."""
        counts = Counter(self.vocab[t] for t in query_tokens if t in self.vocab)
        if not counts:
            return np.zeros(self.n_docs, dtype=np.float32)
        indptr, indices, data = self.matrix.indptr, self.matrix.indices, self.matrix.data
        slices = [slice(indptr[t], indptr[t + 1]) for t in counts]
        rows = np.concatenate([indices[s] for s in slices])
        weights = np.concatenate(
            [data[s] * np.float32(n) for s, n in zip(slices, counts.values(), strict=True)]
        )
        return np.bincount(rows, weights=weights, minlength=self.n_docs).astype(np.float32)

    def matching_rows(self, scores: FloatArray) -> IntArray:
        """Rows that share at least one term with the query (IDF is always positive)."""
        return np.flatnonzero(scores > 0).astype(np.int64)

    def save(self, directory: Path) -> list[Path]:
        """Writes the arrays (no pickle) and the vocabulary; returns the files written."""
        arrays = (
            self.matrix.data,
            self.matrix.indices,
            self.matrix.indptr,
            self.doc_lengths,
            self.term_freqs,
        )
        paths = [directory / name for name in _FILES]
        for path, array in zip(paths, arrays, strict=True):
            np.save(path, array, allow_pickle=False)
        terms = sorted(self.vocab, key=self.vocab.__getitem__)
        vocab_path = directory / VOCAB_FILE
        vocab_path.write_text(json.dumps(terms, ensure_ascii=False), encoding="utf-8")
        return [*paths, vocab_path]

    @classmethod
    def load(cls, directory: Path, params: BM25Params) -> "BM25Index":
        data, indices, indptr, doc_lengths, term_freqs = (
            np.load(directory / name, allow_pickle=False) for name in _FILES
        )
        terms: list[str] = json.loads((directory / VOCAB_FILE).read_text(encoding="utf-8"))
        matrix = sp.csr_matrix((data, indices, indptr), shape=(len(terms), len(doc_lengths)))
        return cls({t: i for i, t in enumerate(terms)}, matrix, term_freqs, doc_lengths, params)


@dataclass(frozen=True, slots=True)
class CorpusStatistics:
    """The collection statistics BM25 scores a query with: live passages, their summed length
    and each query term's document frequency.

    A collection split over shards scores every shard with the sums of its shards' statistics,
    so a passage scores exactly what it would in one index wherever it lives. The counts are
    integers, so the sums, and the average length and IDF made from them, are exact."""

    passages: int
    total_length: int
    document_frequencies: Mapping[str, int]

    @property
    def average_length(self) -> float:
        """``avgdl``, as a single index computes it (1.0 for an empty collection)."""
        return self.total_length / self.passages if self.passages and self.total_length else 1.0

    @classmethod
    def combined(cls, parts: Sequence["CorpusStatistics"]) -> "CorpusStatistics":
        """The statistics of the union of disjoint collections (every shard of one)."""
        frequencies: Counter[str] = Counter()
        for part in parts:
            frequencies.update(part.document_frequencies)
        return cls(
            sum(p.passages for p in parts), sum(p.total_length for p in parts), dict(frequencies)
        )


def contributions(
    idf: npt.NDArray[np.float64] | float,
    tf: npt.NDArray[np.integer],
    doc_lengths: npt.NDArray[np.integer],
    avgdl: float,
    params: BM25Params,
) -> npt.NDArray[np.float32]:
    """Per-posting BM25 contributions, computed in float32 as they are stored.

    Every path (a build, live re-scoring of generation + tail, a merge) goes through this one
    function with the same dtypes, so a score computed over a tail equals the one a fresh build
    stores; float32 halves the memory traffic of re-scoring long posting lists."""
    k1, b = np.float32(params.k1), np.float32(params.b)
    tf32 = np.asarray(tf, dtype=np.float32)
    norm = k1 * (
        np.float32(1.0 - params.b) + b * (np.asarray(doc_lengths, np.float32) / np.float32(avgdl))
    )
    weights = (
        np.asarray(idf, dtype=np.float32) * (tf32 * np.float32(params.k1 + 1.0)) / (tf32 + norm)
    )
    return weights.astype(np.float32, copy=False)


def idf_of(document_frequency: int, n_docs: int) -> float:
    """Lucene's IDF; always positive, so every matching row scores above zero."""
    return float(np.log1p((n_docs - document_frequency + 0.5) / (document_frequency + 0.5)))
