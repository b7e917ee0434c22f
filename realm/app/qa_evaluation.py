"""Asks a question set through the generator and grades every answer: the SQuAD scores, whether
the gold document was retrieved and cited, and how much of the answer its citations support.

A question may name its ``family`` (scores are also reported per family) and its
``gold_doc_id`` (the document the answer comes from); ``gold_retrieved`` and
``citation_precision`` need the latter and are left out of the means where it is missing.
"""

import json
import statistics
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Unpack

from realm.app.qa_metrics import contains, exact_match, token_f1
from realm.client import Answer, AskOptions, GeneratorClient
from realm.generator.citations import content_words

METRICS = ("em", "f1", "contains", "gold_retrieved", "citation_precision", "supported")
ALL = "all"


@dataclass(frozen=True, slots=True)
class Question:
    qid: str
    question: str
    answers: list[str]
    family: str = ""
    gold_doc_id: str = ""


@dataclass(frozen=True, slots=True)
class Graded:
    """One question, its answer, its scores (None where a score does not apply) and how long
    the answer took."""

    question: Question
    answer: Answer
    scores: dict[str, float | None]
    seconds: float

    def record(self) -> dict[str, object]:
        """The ``--out`` line: enough to see which step lost an answer."""
        return {
            "id": self.question.qid,
            "family": self.question.family,
            "question": self.question.question,
            "answers": self.question.answers,
            "gold_doc_id": self.question.gold_doc_id,
            "answer": self.answer.text,
            "sources": [
                {"citation": s.citation, "doc_id": s.doc_id, "score": s.score, "cited": s.cited}
                for s in self.answer.sources
            ],
            "citations": [
                {"citation": c.citation, "start": c.start, "end": c.end, "origin": c.origin}
                for c in self.answer.citations
            ],
            "scores": self.scores,
            "seconds": round(self.seconds, 3),
        }


def read_questions(path: Path) -> list[Question]:
    """JSONL of ``{"id", "question", "answers": [...]}`` with optional ``family`` and
    ``gold_doc_id``; a bad line names its number."""
    questions: list[Question] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                question = Question(
                    str(row["id"]),
                    str(row["question"]),
                    list(row["answers"]),
                    str(row.get("family", "")),
                    str(row.get("gold_doc_id", "")),
                )
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
                raise ValueError(
                    f"{path}:{number}: expected a JSON object with id, question and answers "
                    f"(a list); {error}"
                ) from error
            if not question.question.strip() or not all(
                isinstance(a, str) for a in question.answers
            ):
                raise ValueError(f"{path}:{number}: question is empty or answers are not strings")
            questions.append(question)
    if not questions:
        raise ValueError(f"{path} holds no questions")
    return questions


def grade(question: Question, answer: Answer) -> dict[str, float | None]:
    """The scores of one answer; None where one does not apply (no gold document named, no
    source cited, no content word said)."""
    cited = answer.cited_sources
    gold = question.gold_doc_id
    said = content_words(answer.text)
    backing = set().union(*(content_words(s.text) for s in cited)) if cited else set()
    return {
        "em": exact_match(answer.text, question.answers),
        "f1": token_f1(answer.text, question.answers),
        "contains": contains(answer.text, question.answers),
        "gold_retrieved": float(any(s.doc_id == gold for s in answer.sources)) if gold else None,
        "citation_precision": (
            sum(s.doc_id == gold for s in cited) / len(cited) if gold and cited else None
        ),
        "supported": len(said & backing) / len(said) if said else None,
    }


def evaluate_qa(
    client: GeneratorClient,
    collection: str,
    questions: list[Question],
    concurrency: int,
    progress: Callable[[], None] = lambda: None,
    **options: Unpack[AskOptions],
) -> list[Graded]:
    """Asks every question, ``concurrency`` at a time (the generator batches them), with the
    same answer ``options``, and grades each answer."""

    def ask(question: Question) -> Graded:
        started = time.perf_counter()
        answer = client.ask(question.question, collection, **options)
        seconds = time.perf_counter() - started
        progress()
        return Graded(question, answer, grade(question, answer), seconds)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(ask, questions))


def summarize(graded: list[Graded]) -> dict[str, dict[str, float]]:
    """Means of every score (over the questions it applies to), the question count and the
    median seconds per answer: for all questions, then per family."""
    families = sorted({g.question.family for g in graded if g.question.family})
    groups = {ALL: graded} | {f: [g for g in graded if g.question.family == f] for f in families}
    return {name: _means(members) for name, members in groups.items()}


def _means(graded: Iterable[Graded]) -> dict[str, float]:
    members = list(graded)
    figures: dict[str, float] = {}
    for metric in METRICS:
        values = [v for g in members if (v := g.scores[metric]) is not None]
        if values:
            figures[metric] = sum(values) / len(values)
    figures["questions"] = float(len(members))
    figures["median_seconds"] = statistics.median(g.seconds for g in members)
    return figures
