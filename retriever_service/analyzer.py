"""Turns text into index terms, the same way for documents and queries.

Steps: Unicode NFKC, case folding, word tokenization (CJK runs segmented with jieba, everything
else split on word characters), stopword removal and Snowball stemming. Mixed Chinese/English text
works in every language mode because CJK runs and Latin runs are tokenized separately.

French and Spanish are stemmed with their own Snowball stemmers and keep every word: BM25's IDF
already gives their function words almost no weight, and the packaged stopword lists for them
carry content words ("estados", "nom", "nueva") that a query needs.
"""

import logging
import re
import threading
import unicodedata
from collections.abc import Iterator
from functools import cache
from typing import Literal, get_args

import Stemmer

from realm.retriever import stopwords

Language = Literal["en", "fr", "es", "zh", "none"]
LANGUAGES: tuple[str, ...] = get_args(Language)
# The Snowball stemmer each language's Latin-script words get (Chinese text carries English).
_STEMMERS: dict[Language, str] = {"en": "english", "fr": "french", "es": "spanish", "zh": "english"}

# CJK Unified Ideographs (+ extension A, compatibility ideographs). Kana and Hangul are left to
# the word regex, which keeps them as runs.
_CJK_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_WORD = re.compile(r"\w+", re.UNICODE)
_jieba_lock = threading.Lock()


def normalize(text: str) -> str:
    """NFKC then case folding: full-width letters, ligatures and case variants become one form."""
    return unicodedata.normalize("NFKC", text).casefold()


@cache
def _jieba() -> object:
    """Loads jieba's dictionary once, quietly (it logs at INFO by default)."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


def _segment_cjk(run: str) -> list[str]:
    # jieba's lazy initialisation is not thread-safe; the lock is uncontended once loaded.
    with _jieba_lock:
        jieba = _jieba()
    return [w for w in jieba.cut(run) if w.strip()]  # type: ignore[attr-defined]


def split_words(normalized: str) -> Iterator[str]:
    """Yields words in text order: jieba words for CJK runs, ``\\w+`` runs elsewhere."""
    position = 0
    for match in _CJK_RUN.finditer(normalized):
        yield from _WORD.findall(normalized, position, match.start())
        yield from _segment_cjk(match.group())
        position = match.end()
    yield from _WORD.findall(normalized, position)


class Analyzer:
    """Analyzer for one language; instances are cheap, stateless and thread-safe."""

    def __init__(self, language: Language = "en") -> None:
        if language not in LANGUAGES:
            raise ValueError(f"language={language!r} is not supported; use one of {LANGUAGES}")
        self.language: Language = language
        self._stopwords: frozenset[str] = frozenset()
        self._stemmer_name = _STEMMERS.get(language)
        if language == "en":
            self._stopwords = stopwords.ENGLISH
        elif language == "zh":
            # Chinese text routinely carries English terms; treat them as the English mode would.
            self._stopwords = stopwords.ENGLISH | stopwords.CHINESE
        self._stemmer_local = threading.local()

    def _stemmer(self) -> Stemmer.Stemmer:
        # PyStemmer objects are not thread-safe; one per thread.
        stemmer: Stemmer.Stemmer | None = getattr(self._stemmer_local, "stemmer", None)
        if stemmer is None:
            stemmer = Stemmer.Stemmer(self._stemmer_name)
            self._stemmer_local.stemmer = stemmer
        return stemmer

    def tokens(self, text: str) -> list[str]:
        """The index terms of ``text``, in order, duplicates kept (term frequency matters)."""
        words = [w for w in split_words(normalize(text)) if w not in self._stopwords]
        if self._stemmer_name is None:
            return words
        stemmer = self._stemmer()
        if self._stemmer_name == "english":
            # English stems ASCII words only: CJK words and foreign names pass unchanged.
            return [stemmer.stemWord(w) if w.isascii() else w for w in words]
        return [w if _CJK_RUN.fullmatch(w) else stemmer.stemWord(w) for w in words]
