"""Questions made from a passage's own sentences, whose answers are spans of it: the synthetic
reading-comprehension examples of ``realm train generator``.

A sentence with a span taken out is a cloze; putting a question word in the gap makes it a
question ("Kabul is the capital of what?"), and the span is its answer (unsupervised QA by
cloze translation, Lewis et al., 2019, with their identity mapping). When the passage's subject
opens the sentence, the question asks for the subject ("What is the capital of Afghanistan?").
Rules, not a model: the packaged 135M generator, asked to write a question for a given answer,
writes unrelated ones ("Which country is the largest democracy?" for Jomo Kenyatta's "1964").

The answer is what a reader should copy, a name, a year or a number, so the questions teach the
generator to pick the span that fills the question's gap and to stop after it.
"""

import re
from dataclasses import dataclass

from realm.retriever.chunker import sentence_end_offsets

# What may open a sentence: a capital, a digit or a quote.
_SENTENCE_START = re.compile(r"\s+[A-Z0-9\"'(]")
# A name: capitalised words, possibly joined by "of", "the", "de"... ("Bank of England").
_NAME = re.compile(
    r"\b[A-Z][\w'’-]*[a-z0-9][\w'’-]*"
    r"(?:\s+(?:(?:of|the|de|del|da|di|du|la|le|von|van|and|upon)\s+)*[A-Z][\w'’-]*[a-z0-9][\w'’-]*)*"
)
_YEAR = re.compile(r"\b(?:(?P<prep>in|on|since|by|until)\s+)?(?P<year>1[0-9]{3}|20[0-9]{2})\b(?!s)")
_NUMBER = re.compile(
    r"(?<![\w.,])(?:\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)(?:\s+(?:million|billion|thousand|hundred))?"
    r"(?!\w|[.,]\d)"
)
# "an Italian film director": a name used as an adjective names no thing to answer with.
_ADJECTIVE_USE = re.compile(r"(?:\b(?:a|an|the)\s+)$")
_LOWERCASE_NEXT = re.compile(r"^\s+[a-z]")
# The preposition before a name says what kind of thing it is: a place, or who did something.
_PLACE_BEFORE = re.compile(r"\b(?:in|at|near|within|across)\s+(?:the\s+)?$")
_AGENT_BEFORE = re.compile(r"\bby\s+$")
_COPULA = re.compile(r"^(?P<verb>is|was|are|were)\s+(?P<rest>.+)$")
_PRONOUN_SUBJECT = re.compile(r"^(?:It|He|She)\s+(?=is|was|has|had|became|lies)\b")
# Sentences shorter than this say too little to ask about; longer ones bury the question.
MIN_WORDS = 5
MAX_WORDS = 32
MAX_ANSWER_WORDS = 5
# Words a question keeps besides its question word ("Albania is a country where?").
MIN_QUESTION_WORDS = 4


@dataclass(frozen=True, slots=True)
class ClozeQuestion:
    question: str
    answer: str


def sentences(text: str) -> list[str]:
    """The passage's sentences, split where the chunker sees a sentence end (initials and
    titles do not end one) and the next sentence opens as one does."""
    flat = " ".join(text.split())
    cuts = [end for end in sentence_end_offsets(flat) if _SENTENCE_START.match(flat, end)]
    parts = [flat[start:end] for start, end in zip([0, *cuts], [*cuts, len(flat)], strict=True)]
    return [part.strip() for part in parts if part.strip()]


def cloze_questions(title: str, text: str) -> list[ClozeQuestion]:
    """Every question the rules make from ``text`` (a passage of the document ``title``), in
    the passage's order. Each answer is a span of ``text`` or the title itself."""
    made: list[ClozeQuestion] = []
    for written in sentences(text):
        words = len(written.split())
        if not MIN_WORDS <= words <= MAX_WORDS or written[-1] not in ".!?":
            continue
        # "It is the largest city" asks nothing without its subject: name it.
        sentence = _PRONOUN_SUBJECT.sub(f"{title} ", written) if title else written
        made.extend(_subject_question(title, sentence))
        made.extend(_gap_questions(title, sentence))
    return made


def _subject_question(title: str, sentence: str) -> list[ClozeQuestion]:
    """ "Kabul is the capital of Afghanistan." -> "What is the capital of Afghanistan?" (Kabul)."""
    if not title or not sentence.startswith(title + " "):
        return []
    copula = _COPULA.match(sentence[len(title) + 1 :])
    if copula is None or len(copula["rest"].split()) < 3:
        return []
    rest = _clause(copula["rest"].rstrip(".!?"))
    return [ClozeQuestion(f"What {copula['verb']} {rest}?", title)]


def _gap_questions(title: str, sentence: str) -> list[ClozeQuestion]:
    """The sentence with one name, year or number replaced by a question word."""
    body = sentence.rstrip(".!?")
    gaps: list[tuple[int, int, str, str]] = []  # start, end, question words, answer
    for year in _YEAR.finditer(body):
        words = "when" if year["prep"] else "what year"
        gaps.append((year.start(), year.end(), words, year["year"]))
    for number in _NUMBER.finditer(body):
        if not _YEAR.fullmatch(number.group()):
            gaps.append((number.start(), number.end(), "how many", number.group()))
    for name in _NAME.finditer(body):
        answer = name.group()
        opening = name.start() == 0
        about_title = title and (answer in title or title in answer)
        adjective = answer.endswith(("'s", "’s")) or (
            _ADJECTIVE_USE.search(body[: name.start()]) is not None
            and _LOWERCASE_NEXT.match(body[name.end() :]) is not None
        )
        if opening or about_title or adjective or len(answer.split()) > MAX_ANSWER_WORDS:
            continue
        before = body[: name.start()]
        if place := _PLACE_BEFORE.search(before):
            gaps.append((place.start(), name.end(), "where", answer))
        elif _AGENT_BEFORE.search(before):
            gaps.append((name.start(), name.end(), "whom", answer))
        else:
            gaps.append((name.start(), name.end(), "what", answer))
    made: list[ClozeQuestion] = []
    for start, end, words, answer in gaps:
        # The question keeps the sentence up to the gap and the clause the gap is in.
        question = f"{body[:start]}{words}{_clause(body[end:])}".strip()
        if len(question.split()) - len(words.split()) >= MIN_QUESTION_WORDS:
            made.append(ClozeQuestion(question[0].upper() + question[1:] + "?", answer))
    return made


def _clause(after: str) -> str:
    """What follows a gap, up to the clause's end (a comma, semicolon or dash)."""
    return re.split(r"\s*[,;:—–(]\s*|\s+-\s+", after, maxsplit=1)[0]
