"""Passage encoding: ReaLM's encoder path against a raw SentenceTransformer.encode loop.

Same model, same batch size, same passages (Wikipedia summaries): the ratio shows ReaLM's
overhead, which should be none.
"""

import statistics

from bench.common import Row, median_seconds
from realm.demo import wiki_summaries
from retriever_service.embedder import DEFAULT_MODEL, load_encoder, resolve_model_path

REPEATS = 3


def run(quick: bool) -> list[Row]:
    from sentence_transformers import SentenceTransformer

    texts = [d.text for d in wiki_summaries(48 if quick else 1_024)]
    encoder = load_encoder(DEFAULT_MODEL)
    path, local = resolve_model_path(DEFAULT_MODEL)
    raw = SentenceTransformer(path, local_files_only=local)

    def raw_encode(batch: list[str]) -> object:
        return raw.encode(
            batch, batch_size=encoder.batch_size, normalize_embeddings=True, show_progress_bar=False
        )

    encoder.encode(texts[:8])  # warm-up on both sides, excluded
    raw_encode(texts[:8])
    # Alternating the two sides spreads any drift of the machine's speed over both.
    realm_times, raw_times = [], []
    for _ in range(REPEATS):
        realm_times.append(median_seconds(lambda: encoder.encode(texts), repeats=1, warmup=0))
        raw_times.append(median_seconds(lambda: raw_encode(texts), repeats=1, warmup=0))
    realm_seconds, raw_seconds = statistics.median(realm_times), statistics.median(raw_times)
    return [
        Row(
            f"passage encoding, {len(texts):,} passages",
            len(texts) / realm_seconds,
            "raw SentenceTransformer.encode",
            len(texts) / raw_seconds,
            "passages/s",
            0.95,
            note=f"median of {REPEATS} alternating runs per side",
        )
    ]
