"""Finds the citations in an answer and maps them to the passages the prompt numbered.

Markers the model wrote (``[2]``, ``[1, 3]``, ``[1][3]``) are parsed; a number that was not in
the prompt is dropped, never passed on. Small models often answer correctly without writing a
marker, so (unless grounding is ``free``) a sentence with no marker is cited by exact spans
(``spans.locate``): each run of its words that a passage contains verbatim cites that passage at
that place, and a passage no span comes from is not cited.

``best_passage`` (shared content words) remains for extraction, whose values are single fields.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from realm.generator.grounding import Grounding
from realm.generator.prompts import RetrievedPassage
from realm.generator.spans import locate

Origin = Literal["model", "span"]

_MARKER = re.compile(r"\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_WORD = re.compile(r"\w+")
_STOPWORDS = frozenset(
    "a an and are as at be been but by can could did do does for from had has have he her his "
    "how i if in into is it its of on or she so than that the their them then there these they "
    "this to was we were what when where which who why will with would you your not no yes".split()
)
MIN_SHARED_SHARE = 0.5
MIN_SHARED_WORDS = 2


@dataclass(frozen=True, slots=True)
class Citation:
    """``answer[start:end]`` cites source number ``number`` (1-based, as in the prompt); a span
    citation also says where in that passage's text the span is."""

    number: int
    start: int
    end: int
    origin: Origin
    source_start: int = 0
    source_end: int = 0


def content_words(text: str) -> set[str]:
    return {
        word
        for word in _WORD.findall(text.casefold())
        if word not in _STOPWORDS and (len(word) > 2 or word.isdigit())
    }


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Sentence boundaries; a marker right after a full stop stays with its sentence."""
    spans: list[tuple[int, int]] = []
    start = 0
    for boundary in _SENTENCE_END.finditer(text):
        if _MARKER.match(text, boundary.end()):
            continue
        if text[start : boundary.start()].strip():
            spans.append((start, boundary.start()))
        start = boundary.end()
    if text[start:].strip():
        spans.append((start, len(text.rstrip())))
    return spans


def find_citations(
    answer: str,
    passages: Sequence[RetrievedPassage],
    question: str,
    grounding: Grounding = "cite",
) -> list[Citation]:
    """The model's own markers, then (unless ``free``) exact spans for sentences without any."""
    citations: list[Citation] = []
    for start, end in sentence_spans(answer):
        sentence = answer[start:end]
        numbers = [
            int(number)
            for marker in _MARKER.finditer(sentence)
            for number in marker.group(1).split(",")
        ]
        valid = list(dict.fromkeys(n for n in numbers if 1 <= n <= len(passages)))
        if valid:
            citations.extend(Citation(n, start, end, "model") for n in valid)
        elif grounding != "free":
            citations.extend(span_citations(answer, passages, question, (start, end)))
    return citations


def span_citations(
    answer: str,
    passages: Sequence[RetrievedPassage],
    question: str,
    within: tuple[int, int] | None = None,
) -> list[Citation]:
    return [
        Citation(s.number, s.start, s.end, "span", s.source_start, s.source_end)
        for s in locate(answer, passages, question, within)
    ]


def best_passage(text: str, passage_words: Sequence[set[str]]) -> int | None:
    """The 1-based number of the passage that covers most of ``text``'s content words."""
    words = content_words(text)
    if not words:
        return None
    needed = max(min(MIN_SHARED_WORDS, len(words)), MIN_SHARED_SHARE * len(words))
    best, best_shared = None, 0
    for number, candidates in enumerate(passage_words, start=1):
        shared = len(words & candidates)
        if shared >= needed and shared > best_shared:
            best, best_shared = number, shared
    return best
