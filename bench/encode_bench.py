"""Passage encoding: ReaLM's encoder path against a raw SentenceTransformer.encode loop.

Same model, same batch size, same passages (Wikipedia summaries): the ratio shows ReaLM's
overhead, which should be none.
"""

from bench.common import Row, median_seconds
from realm.demo import wiki_summaries
from retriever_service.embedder import DEFAULT_MODEL, load_encoder, resolve_model_path


def run(quick: bool) -> list[Row]:
    from sentence_transformers import SentenceTransformer

    texts = [d.text for d in wiki_summaries(128 if quick else 1_024)]
    encoder = load_encoder(DEFAULT_MODEL)
    path, local = resolve_model_path(DEFAULT_MODEL)
    raw = SentenceTransformer(path, local_files_only=local)
    repeats = 3

    def raw_encode() -> object:
        return raw.encode(
            texts, batch_size=encoder.batch_size, normalize_embeddings=True, show_progress_bar=False
        )

    realm_seconds = median_seconds(lambda: encoder.encode(texts), repeats=repeats)
    raw_seconds = median_seconds(raw_encode, repeats=repeats)
    return [
        Row(
            f"passage encoding, {len(texts):,} passages",
            len(texts) / realm_seconds,
            "raw SentenceTransformer.encode",
            len(texts) / raw_seconds,
            "passages/s",
            0.95,
        )
    ]
