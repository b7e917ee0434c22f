"""Asks a question set through the generator and scores the answers (EM, F1, contains)."""

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from realm.app.qa_metrics import contains, exact_match, token_f1
from realm.client import Answer, GeneratorClient


@dataclass(frozen=True, slots=True)
class Question:
    qid: str
    question: str
    answers: list[str]


def read_questions(path: Path) -> list[Question]:
    """JSONL of ``{"id", "question", "answers": [...]}``; a bad line names its number."""
    questions: list[Question] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                question = Question(str(row["id"]), str(row["question"]), list(row["answers"]))
            except (json.JSONDecodeError, KeyError, TypeError) as error:
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


def evaluate_qa(
    client: GeneratorClient,
    collection: str,
    questions: list[Question],
    concurrency: int,
    max_new_tokens: int,
    progress: Callable[[], None] = lambda: None,
) -> dict[str, float]:
    """Means of ``em``, ``f1`` and ``contains`` over every question, asked ``concurrency`` at a
    time (the generator batches them)."""

    def ask(question: Question) -> Answer:
        answer = client.ask(question.question, collection, max_new_tokens=max_new_tokens)
        progress()
        return answer

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        answers = list(pool.map(ask, questions))
    count = len(questions)
    return {
        "em": sum(exact_match(a.text, q.answers) for a, q in zip(answers, questions, strict=True))
        / count,
        "f1": sum(token_f1(a.text, q.answers) for a, q in zip(answers, questions, strict=True))
        / count,
        "contains": sum(
            contains(a.text, q.answers) for a, q in zip(answers, questions, strict=True)
        )
        / count,
        "questions": float(count),
    }
