"""Where an answer's words come from: the short answer inside a sentence, and the exact passage
span behind each part of it.

A small model answers "What is the capital of Chad?" with "The capital of Chad is N'Djamena."
Half of that sentence repeats the question; the fact is what the question did not already say.
``short_answer`` finds it: the first run of words that are neither the question's (compared by a
light stem, so "caused" repeats "causes") nor joining words, up to the next repeated word or
clause mark.

``locate`` ties each run of answer words that carries new content to a passage that contains it
verbatim (case and spacing aside), with the character offsets in that passage's text. It is the
attribution for every grounding mode: after strict decoding every such run is found by
construction; after free decoding a run that no passage contains stays uncited.
"""

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from realm.generator.answer_types import typed_names
from realm.generator.grounding import CONNECTORS
from realm.generator.prompts import RetrievedPassage

# How a model says its passage does not answer (strict decoding lets it copy this phrase), and
# other ways a small model says so.
REFUSAL = "I don't know."
_REFUSAL = re.compile(
    r"\b(?:i don'?t know|(?:does|do|did) not (?:say|mention|state|contain|provide|give)|"
    r"not (?:mentioned|stated|given|provided)|no information)\b",
    re.IGNORECASE,
)
# A number keeps its separators ("50,000", "3.14"): cut at the comma, "50,000 spectators" would
# answer "50". A word keeps its apostrophes ("N'Djamena").
_WORD = re.compile(r"\d+(?:[.,]\d+)+|\w+(?:['’]\w+)*|[^\w\s]")
_CLAUSE_END = frozenset('.,;:!?()[]"')
# Words that say nothing new: the connecting words strict decoding may write, and a few more.
FUNCTION_WORDS = frozenset(word for word in CONNECTORS if word.isalpha()) | frozenset(
    "being do does did these those they through via within what when where why how".split()
)
_SUFFIXES = ("ing", "ed", "es", "s")
# A verb after the fact begins what is said about it: "Sicily is one of ..." answers "Where is
# Mount Etna?" with "Sicily".
_PREDICATE = frozenset("is are was were has have had".split())


@dataclass(frozen=True, slots=True)
class SourceSpan:
    """``answer[start:end]`` occurs in passage ``number`` (1-based, as numbered in the prompt)
    at ``passage.text[source_start:source_end]``."""

    number: int
    start: int
    end: int
    source_start: int
    source_end: int


_DATE_QUESTION = re.compile(r"^\W*(?:when|(?:in )?(?:what|which) year)\b", re.IGNORECASE)
_NUMBER_QUESTION = re.compile(
    r"^\W*how (?:many|much|long|old|far|tall|high|big|large)\b|" + _DATE_QUESTION.pattern,
    re.IGNORECASE,
)
# Capitalised, as in a date: lower case, "may" and "march" are a verb.
_MONTHS = frozenset(
    "January February March April May June July August September October November December".split()
)
# What a date says: a year or a decade ("1889", "1980s", not the "000" of "50,000"), a day of a
# month ("2nd"), a month, a century or an era.
_DATE = re.compile(
    r"(?<![\w.,])\d{3,4}s?(?!\w|[.,]\d)|\b\d{1,2}(?:st|nd|rd|th)\b|\b[Cc]entur(?:y|ies)\b|\b(?:"
    + "|".join(sorted(_MONTHS))
    + r"|BC|BCE|AD|CE)\b"
)


def expects_number(question: str) -> bool:
    """Whether the question asks for a count, an amount or a date: its fact has a digit."""
    return _NUMBER_QUESTION.search(question) is not None


def expects_date(question: str) -> bool:
    """Whether the question asks when: its fact is a date."""
    return _DATE_QUESTION.search(question) is not None


def answers_kind(question: str, fact: str) -> bool:
    """Whether ``fact`` is what the question asks for, where that can be told: a date after
    "when" or "what year", a number after "how many" or "how much". A passage that only yields
    another kind of fact ("60 to 75 million" for when a war ended) does not answer."""
    if expects_date(question):
        return _DATE.search(fact) is not None
    return not expects_number(question) or any(char.isdigit() for char in fact)


def shares_subject(passage: str, question: str) -> bool:
    """Whether ``passage`` is about what ``question`` asks about: it has every name the
    question gives (its capitalised words past the first: "Francis" and "Assisi"), or, for a
    question without names, one of its content words; derivations count ("Latvian" for
    "Latvia"). A fact read from another passage answers another question ("1515", from Francis
    I of France, for when Francis of Assisi was born). Always true for a question not written
    with spaces between its words (Chinese, Japanese, Thai), whose words this cannot tell
    apart."""
    tokens = [m.group() for m in words(question) if m.group()[0].isalnum()]
    if len(tokens) < 2:
        return True
    content = [t for t in tokens if t.casefold() not in FUNCTION_WORDS]
    names = [t for t in tokens[1:] if t[0].isupper() and t.casefold() not in FUNCTION_WORDS]
    said = {stem(m.group()) for m in words(passage) if m.group()[0].isalnum()}

    def found(word: str) -> bool:
        wanted = stem(word)
        return any(_derived(wanted, other) for other in said)

    return all(found(name) for name in names) if names else any(map(found, content))


def is_refusal(text: str) -> bool:
    """Whether the model said that its passages do not answer."""
    return _REFUSAL.search(text) is not None


def stem(word: str) -> str:
    """Folds plurals and tenses together, enough to tell that an answer repeats the question."""
    word = word.casefold().removesuffix("'s").removesuffix("’s")
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def words(text: str) -> list[re.Match[str]]:
    return list(_WORD.finditer(text))


def _asked(question: str) -> set[str]:
    """The stems of the question's words: what an answer repeating them does not add."""
    return {stem(m.group()) for m in words(question)}


def short_answer(text: str, question: str) -> tuple[int, int] | None:
    """The character span of the fact in ``text``, or None when the text only repeats the
    question (the model did not find an answer)."""
    asked = _asked(question)
    tokens = words(text)
    first = next((i for i, m in enumerate(tokens) if _is_new(m.group(), asked)), None)
    if first is None:
        return None
    # A name may begin with a word of the question: "Mexico City", "Andorra la Vella".
    begin = first
    while (
        begin > 0
        and tokens[begin - 1].group()[0].isupper()
        and text[tokens[begin - 1].end() : tokens[begin].start()] == " "
        and tokens[begin - 1].group().casefold() not in FUNCTION_WORDS
    ):
        begin -= 1
    last = first
    for i in range(first + 1, len(tokens)):
        word = tokens[i].group()
        if word in _CLAUSE_END or "\n" in text[tokens[i - 1].end() : tokens[i].start()]:
            break
        if word.casefold() in _PREDICATE:
            break
        if not _is_new(word, asked) and word.casefold() not in FUNCTION_WORDS:
            break
        if _is_new(word, asked):
            last = i
    return tokens[begin].start(), tokens[last].end()


def _is_new(word: str, asked: set[str]) -> bool:
    """Whether ``word`` says something the question did not: a content word whose stem is not
    the question's (nor one of its derivations, "Latvian" after "Latvia")."""
    if word in _CLAUSE_END or not word[0].isalnum() or word.casefold() in FUNCTION_WORDS:
        return False
    stemmed = stem(word)
    return not any(_derived(stemmed, a) for a in asked)


def _continues_name(word: str, following: str) -> bool:
    """Whether ``following`` goes on with a name that ``word`` is part of: both are capitalised,
    as in "Black Sea"."""
    return word[0].isupper() and following[0].isupper()


def _derived(one: str, other: str) -> bool:
    """The same word, or one derived from the other: "Latvian" and "Latvia", "Argentine" and
    "Argentina" share all but their last letters."""
    shared = next(
        (at for at, (a, b) in enumerate(zip(one, other, strict=False)) if a != b),
        min(len(one), len(other)),
    )
    return one == other or (shared >= 4 and shared >= min(len(one), len(other)) - 1)


def opening_rule(question: str) -> Callable[[bytes, int], bool]:
    """Where a short answer may start (``CopyConstraint.may_open``): at a word that is new to
    the question, or at a name that grows out of one of its words ("Mexico City", "Andorra la
    Vella" for a question about Mexico or Andorra), never at a repeat of the question; at a
    number (or a month, for a date) when the question asks for one."""
    asked = _asked(question)
    number = expects_number(question)
    date = expects_date(question)

    def may_open(blob: bytes, at: int) -> bool:
        window = blob[at : at + 160].split(b"\x00", 1)[0].decode("utf-8", "ignore")
        following = [m.group() for m in words(window)[:4]]
        if not following or not following[0][0].isalnum() or number:
            return (
                bool(following)
                and number
                and (following[0][0].isdigit() or (date and following[0] in _MONTHS))
            )
        if _is_new(following[0], asked):
            return True
        if not following[0][0].isupper() or stem(following[0]) not in asked:
            return False
        for word in following[1:]:
            if word[0].isupper() and _is_new(word, asked):
                return True
            if not (word[0].isupper() or (word.islower() and len(word) <= 3)):
                return False
        return False

    return may_open


def new_names(text: str, question: str, names: frozenset[str]) -> list[tuple[int, int]]:
    """The spans of ``text`` that are one of ``names`` (``answer_types``) and say something the
    question did not: "Kuwait City" for the capital of Kuwait, not "Kuwait"."""
    asked = _asked(question)
    return [
        (start, end)
        for start, end in typed_names(text, names)
        if any(_is_new(m.group(), asked) for m in words(text[start:end]))
    ]


def typed_opening(question: str, names: frozenset[str]) -> Callable[[bytes, int], bool]:
    """Where an answer of the question's type may start (``CopyConstraint.may_open``): at one
    of ``names`` that is new to the question, "Europe" in "a country in Southeast Europe"."""

    def may_open(blob: bytes, at: int) -> bool:
        window = blob[at : at + 96].split(b"\x00", 1)[0].decode("utf-8", "ignore")
        found = new_names(window, question, names)
        return bool(found) and found[0][0] == 0

    return may_open


class _Searchable:
    """A passage's text lowercased with runs of spaces collapsed, and where each character came
    from, so a match maps back to exact offsets in the original text."""

    def __init__(self, text: str) -> None:
        chars: list[str] = []
        origin: list[int] = []
        for at, char in enumerate(text):
            if char.isspace() and chars and chars[-1] == " ":
                continue
            lowered = " " if char.isspace() else char.lower()
            chars.append(lowered if len(lowered) == 1 else char)
            origin.append(at)
        self.text = "".join(chars)
        self.origin = origin

    def find(self, needle: str) -> tuple[int, int] | None:
        # Whole words only: "Nig" is not found in "Niger"; a mark may touch what follows it.
        before = r"(?<!\w)" if needle[:1].isalnum() else ""
        after = r"(?!\w)" if needle[-1:].isalnum() else ""
        match = re.search(before + re.escape(needle) + after, self.text)
        if match is None:
            return None
        return self.origin[match.start()], self.origin[match.end() - 1] + 1


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def locate(
    answer: str,
    passages: Sequence[RetrievedPassage],
    question: str,
    within: tuple[int, int] | None = None,
) -> list[SourceSpan]:
    """The exact passage spans behind ``answer`` (or its ``within`` part): each maximal run of
    words that starts with a new content word, occurs verbatim in a passage and ends on a new
    content word or on the last word of a name ("Black Sea" for a sea question). Where several
    passages contain a run, the one that also names most of the question's words wins (then the
    better-ranked one): "Africa" is cited to the passage about the country asked for."""
    start, end = within or (0, len(answer))
    asked = _asked(question)
    searchable = [_Searchable(p.text) for p in passages]
    subject = {stem(m.group()) for m in words(question) if _is_new(m.group(), set())}
    topical = [
        len(subject & {stem(m.group()) for m in words(f"{p.title} {p.text}")}) for p in passages
    ]
    tokens = [m for m in words(answer) if start <= m.start() and m.end() <= end]
    spans: list[SourceSpan] = []
    i = 0
    while i < len(tokens):
        if not _is_new(tokens[i].group(), asked):
            i += 1
            continue
        found: tuple[int, int, int, int] | None = None  # last word, passage, source start, end
        for j in range(i, len(tokens)):
            needle = _normal(answer[tokens[i].start() : tokens[j].end()])
            hits = [
                (number, where)
                for number, passage in enumerate(searchable, start=1)
                if (where := passage.find(needle)) is not None
            ]
            if not hits:
                break
            number, where = max(hits, key=lambda hit: (topical[hit[0] - 1], -hit[0]))
            found = (j, number, *where)
        if found is None:
            i += 1
            continue
        last, number, source_start, source_end = found
        while last > i and not _is_new(tokens[last].group(), asked):
            last -= 1  # a span ends on content, not on "is the"
        while last < found[0] and _continues_name(tokens[last].group(), tokens[last + 1].group()):
            last += 1  # but a name ends where it ends: "Black Sea", though "sea" was asked
        if last != found[0]:
            needle = _normal(answer[tokens[i].start() : tokens[last].end()])
            where = searchable[number - 1].find(needle)
            assert where is not None  # a prefix of a match is a match
            source_start, source_end = where
        spans.append(
            SourceSpan(number, tokens[i].start(), tokens[last].end(), source_start, source_end)
        )
        i = found[0] + 1
    return spans
