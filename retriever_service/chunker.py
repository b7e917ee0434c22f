"""Splits documents into passages: windows of words with overlap, cut at sentence ends.

A passage is the unit the indexes hold and answers cite, so it keeps exact character offsets into
the document text. Windows are measured in words (each CJK character counts as one) because that
tracks the embedding model's token budget closely without loading its tokenizer here.
"""

import re
from dataclasses import dataclass

# A "word" for window sizing: one CJK character, or a run of other word characters.
_UNIT = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|\w+", re.UNICODE)
# Sentence ends: Latin terminators followed by space, or CJK terminators, or blank lines.
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|[。！？；]|\n\s*\n")
# The word a full stop closes, when it is an initial ("J. R. R. Tolkien", "the U.S. economy")
# or a title that precedes a name ("Dr. Watson"): such a stop ends no sentence. The price: a
# sentence that really ends on a capital letter ("vitamin C.") runs on into the next.
_WORD_BEFORE_STOP = re.compile(r"(?<!\w)(\w+)\.$")
_TITLES = frozenset(
    "mr mrs ms dr prof st mt jr sr gen col capt lt sgt rev fr vs no nos fig".split()
)


MAX_CHUNK_WORDS = 2048


@dataclass(frozen=True, slots=True)
class ChunkSpan:
    """Character offsets ``[start, end)`` of one passage in its document's text."""

    start: int
    end: int


@dataclass(frozen=True, slots=True)
class ChunkerConfig:
    """Window length and overlap in words; validated so a chunker always makes progress."""

    words: int = 160
    overlap: int = 32

    def __post_init__(self) -> None:
        if not 8 <= self.words <= MAX_CHUNK_WORDS:
            raise ValueError(
                f"chunk_words={self.words} is outside 8..{MAX_CHUNK_WORDS}; embedding models "
                "read a few hundred words at most"
            )
        if not 0 <= self.overlap < self.words:
            raise ValueError(
                f"chunk_overlap={self.overlap} must be in [0, chunk_words={self.words}); "
                "lower chunk_overlap"
            )


def chunk(text: str, config: ChunkerConfig) -> list[ChunkSpan]:
    """Passage spans covering every word of ``text``; a short text is one passage.

    A window that would end mid-sentence is pulled back to the last sentence end in its second
    half, so passages read as whole sentences when the text has any.
    """
    units = [(m.start(), m.end()) for m in _UNIT.finditer(text)]
    if len(units) <= config.words:
        stripped_start = len(text) - len(text.lstrip())
        return [ChunkSpan(stripped_start, len(text.rstrip()))] if text.strip() else []
    sentence_ends = set(sentence_end_offsets(text))
    spans: list[ChunkSpan] = []
    first = 0
    while first < len(units):
        last = min(first + config.words, len(units))  # exclusive
        if last < len(units):
            last = _pull_back_to_sentence_end(units, first, last, sentence_ends, text)
        spans.append(ChunkSpan(units[first][0], _end_of(units, last - 1, sentence_ends, text)))
        if last == len(units):
            break
        first = _forward_to_sentence_start(
            units, max(first + 1, last - config.overlap), last, sentence_ends
        )
    return spans


def sentence_end_offsets(text: str) -> list[int]:
    """Offsets just past each sentence's terminator, in order. A full stop after an initial or
    a title is not one: "J. R. R. Tolkien wrote it." is one sentence, not four."""
    return [
        m.end()
        for m in _SENTENCE_END.finditer(text)
        if m.group() != "." or not _abbreviation_before(text, m.end())
    ]


def _abbreviation_before(text: str, stop_end: int) -> bool:
    closed = _WORD_BEFORE_STOP.search(text, max(0, stop_end - 8), stop_end)
    if closed is None:
        return False
    word = closed.group(1)
    return (len(word) == 1 and word.isupper()) or word.casefold() in _TITLES


def _starts_sentence(units: list[tuple[int, int]], index: int, sentence_ends: set[int]) -> bool:
    gap = range(units[index - 1][1], units[index][0] + 1)
    return any(offset in sentence_ends for offset in gap)


def _forward_to_sentence_start(
    units: list[tuple[int, int]], first: int, last: int, sentence_ends: set[int]
) -> int:
    """Moves an overlap start to the first sentence start before ``last``, if there is one."""
    for candidate in range(first, last):
        if _starts_sentence(units, candidate, sentence_ends):
            return candidate
    return first


def _end_of(units: list[tuple[int, int]], index: int, sentence_ends: set[int], text: str) -> int:
    """End offset of word ``index``, extended over a sentence terminator right after it."""
    end = units[index][1]
    if end < len(text) and end + 1 in sentence_ends:
        return end + 1
    return end


def _pull_back_to_sentence_end(
    units: list[tuple[int, int]], first: int, last: int, sentence_ends: set[int], text: str
) -> int:
    halfway = first + (last - first) // 2
    for candidate in range(last, halfway, -1):
        if _starts_sentence(units, candidate, sentence_ends):
            return candidate
    return last
