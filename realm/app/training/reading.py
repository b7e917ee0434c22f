"""Training examples for the generator's reader: (question, one passage, short answer), the form
the generator's short answer reads in (one passage at a time, realm.generator.pipeline).

The answer is a span of the passage, copied as it is written there, or the reader's refusal
when the passage does not answer. A share of refusal examples pairs a question with a near miss
(a passage of another document that BM25 ranks high for the question and that does not hold
the answer), so the reader learns to say so rather than copy something from it.

Examples come from a QA file (question and gold answers: the passage is the best BM25 passage
that holds an answer) or are made from the collection itself (``cloze``).
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from realm.app.training.cloze import cloze_questions
from realm.app.training.corpus import CollectionPassages, TrainingInputError
from realm.generator.spans import REFUSAL

# Fewer examples than this teach the reader nothing but noise.
MIN_READING_EXAMPLES = 32
# Passages looked at for a question's answer, or for its near miss.
CANDIDATES = 10


@dataclass(frozen=True, slots=True)
class ReadingExample:
    question: str
    title: str
    passage: str
    # A span of ``passage`` (or its title), or REFUSAL.
    answer: str


@dataclass(frozen=True, slots=True)
class QAPair:
    question: str
    answers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ReadingExamples:
    examples: list[ReadingExample]
    # Questions looked at (made or read) and those with no passage to read them with.
    questions: int
    unmatched: int

    @property
    def refusals(self) -> int:
        return sum(example.answer == REFUSAL for example in self.examples)


def read_qa_file(path: Path) -> list[QAPair]:
    """JSON lines with "question" and "answers" (a list) or "answer" (a string)."""
    pairs: list[QAPair] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            answers = row["answers"] if "answers" in row else [row["answer"]]
            pair = QAPair(str(row["question"]).strip(), tuple(str(a).strip() for a in answers))
        except (ValueError, KeyError, TypeError) as error:
            raise TrainingInputError(
                f'--questions {path} line {number}: expected a JSON object with "question" and '
                f'"answers" (a list) or "answer" ({type(error).__name__}: {error})'
            ) from error
        if pair.question and any(pair.answers):
            pairs.append(pair)
    return pairs


def labelled_reading(
    passages: CollectionPassages,
    pairs: list[QAPair],
    refusal_share: float,
    seed: int,
    minimum: int = MIN_READING_EXAMPLES,
) -> ReadingExamples:
    """One example per question whose answer BM25 finds in one of its first passages: that
    passage and the answer as it is written there (or, for a share, a refusal on a near miss)."""
    rng = np.random.default_rng(seed)
    examples: list[ReadingExample] = []
    unmatched = 0
    for pair in pairs:
        ranked = [int(row) for row in passages.bm25_top(pair.question, CANDIDATES)]
        found = next(
            ((row, span) for row in ranked if (span := _answer_span(passages, row, pair.answers))),
            None,
        )
        if found is None:
            unmatched += 1
            continue
        row, span = found
        if rng.random() < refusal_share:
            miss = next((r for r in ranked if not _answer_span(passages, r, pair.answers)), None)
            if miss is not None:
                examples.append(_example(passages, miss, pair.question, REFUSAL))
                continue
        examples.append(_example(passages, row, pair.question, span))
    _require_enough(
        examples,
        minimum,
        len(pairs),
        "questions of --questions have an answer in the "
        "collection's passages; check that the file is about this collection",
    )
    return ReadingExamples(examples, len(pairs), unmatched)


def synthetic_reading(
    passages: CollectionPassages,
    count: int,
    refusal_share: float,
    seed: int,
    minimum: int = MIN_READING_EXAMPLES,
) -> ReadingExamples:
    """``count`` examples from passages drawn with ``seed``: one cloze question each, read
    with its own passage, or (for a share) refused on a near miss."""
    rng = np.random.default_rng(seed)
    examples: list[ReadingExample] = []
    looked_at = unmatched = 0
    for row in (int(r) for r in rng.permutation(len(passages.texts))):
        if len(examples) >= count:
            break
        looked_at += 1
        questions = cloze_questions(passages.titles[row], passages.bodies[row])
        if not questions:
            unmatched += 1
            continue
        cloze = questions[int(rng.integers(len(questions)))]
        if rng.random() < refusal_share:
            miss = _near_miss(passages, cloze.question, row, cloze.answer)
            if miss is not None:
                examples.append(_example(passages, miss, cloze.question, REFUSAL))
                continue
        examples.append(_example(passages, row, cloze.question, cloze.answer))
    _require_enough(
        examples,
        minimum,
        looked_at,
        "passages gave a question; the collection needs "
        "more passages with sentences that name things, years or numbers",
    )
    return ReadingExamples(examples, looked_at, unmatched)


def _example(passages: CollectionPassages, row: int, question: str, answer: str) -> ReadingExample:
    return ReadingExample(question, passages.titles[row], passages.bodies[row], answer)


def _answer_span(passages: CollectionPassages, row: int, answers: tuple[str, ...]) -> str:
    """The first answer as the passage (or its title) writes it, as whole words; "" if none."""
    for answer in answers:
        pattern = re.compile(rf"(?<!\w){re.escape(answer)}(?!\w)", re.IGNORECASE)
        found = pattern.search(passages.bodies[row]) or pattern.search(passages.titles[row])
        if found:
            return found.group()
    return ""


def _near_miss(passages: CollectionPassages, question: str, source: int, answer: str) -> int | None:
    """The best BM25 passage for ``question`` from another document that lacks ``answer``."""
    for row in (int(r) for r in passages.bm25_top(question, CANDIDATES)):
        other = passages.doc_ids[row] != passages.doc_ids[source]
        if other and not _answer_span(passages, row, (answer,)):
            return row
    return None


def _require_enough(examples: list[ReadingExample], minimum: int, looked_at: int, why: str) -> None:
    if len(examples) < minimum:
        raise TrainingInputError(
            f"only {len(examples)} reading examples from {looked_at} (at least {minimum} are "
            f"needed): too few {why}"
        )
