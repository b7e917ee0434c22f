"""Passage encoding: ReaLM's encoder path against a raw SentenceTransformer.encode loop.

Same model instance, same batch size, same passages (Wikipedia summaries): the ratio shows
ReaLM's overhead, which should be none. The sides alternate, and the median of several short runs
is compared, because this benchmark's figure sits at 1.0 and this machine's speed drifts.
"""

import statistics
import time
from collections.abc import Callable

from bench.common import Row
from realm.app.corpus import wiki_summaries
from realm.retriever.embedder import DEFAULT_MODEL, load_encoder

ROUNDS = 6


def run(quick: bool) -> list[Row]:
    texts = [d.text for d in wiki_summaries(24 if quick else 256)]
    encoder = load_encoder(DEFAULT_MODEL)
    raw = encoder.model  # the same weights and threads: only the call around it differs

    def raw_encode(batch: list[str]) -> object:
        return raw.encode(
            batch, batch_size=encoder.batch_size, normalize_embeddings=True, show_progress_bar=False
        )

    encoder.encode(texts[:8])  # warm-up on both sides, excluded
    raw_encode(texts[:8])
    sides: dict[str, Callable[[], object]] = {
        "realm": lambda: encoder.encode(texts),
        "raw": lambda: raw_encode(texts),
    }
    times: dict[str, list[float]] = {"realm": [], "raw": []}
    # Rounds alternate which side goes first (realm-raw, raw-realm, ...): runs here spread by
    # ±20%, and a fixed order read 0.95x for two identical calls.
    for round_number in range(ROUNDS):
        order = ["realm", "raw"] if round_number % 2 == 0 else ["raw", "realm"]
        for side in order:
            started = time.perf_counter()
            sides[side]()
            times[side].append(time.perf_counter() - started)
    realm_seconds, raw_seconds = statistics.median(times["realm"]), statistics.median(times["raw"])
    return [
        Row(
            f"passage encoding, {len(texts):,} passages",
            len(texts) / realm_seconds,
            "raw SentenceTransformer.encode",
            len(texts) / raw_seconds,
            "passages/s",
            0.95,
            note=f"median of {ROUNDS} runs per side, the order alternating",
        )
    ]
