"""How ``realm eval qa`` grades one answer and sums a question set up (no server needed)."""

from realm.app.qa_evaluation import Graded, Question, grade, summarize
from realm.client import Answer, Source


def _source(citation: int, doc_id: str, text: str, cited: bool) -> Source:
    return Source(citation, doc_id, f"{doc_id}#0", text, 0, len(text), 0.5, doc_id, cited)


def _answer(text: str, sources: list[Source]) -> Answer:
    return Answer(text, sources, [], "stop", True, "", 10, 5, {"total": 1.0}, "m")


PARIS = _source(1, "France", "Paris is the capital of France.", cited=True)
LYON = _source(2, "Lyon", "Lyon is a city on the Rhone.", cited=False)
CAPITAL = Question("q1", "What is the capital of France?", ["Paris"], "capital", "France")


def test_a_right_answer_cited_to_its_gold_document() -> None:
    scores = grade(CAPITAL, _answer("Paris is the capital.", [PARIS, LYON]))
    assert scores == {
        "em": 0.0,
        "f1": 0.5,  # "paris is capital" against "paris"
        "contains": 1.0,
        "gold_retrieved": 1.0,
        "citation_precision": 1.0,
        "supported": 1.0,  # "paris" and "capital" are both in the cited passage
    }


def test_a_wrong_citation_and_an_unsupported_word_are_counted() -> None:
    wrong = _source(2, "Lyon", "Lyon is a city on the Rhone.", cited=True)
    scores = grade(CAPITAL, _answer("Lyon, beautiful.", [_source(1, "France", "x", False), wrong]))
    assert scores["contains"] == 0.0
    assert scores["gold_retrieved"] == 1.0  # retrieved, but not what the answer used
    assert scores["citation_precision"] == 0.0
    assert scores["supported"] == 0.5  # "lyon" is in the cited passage, "beautiful" is not


def test_scores_that_do_not_apply_are_none_and_left_out_of_the_means() -> None:
    no_gold = Question("q2", "Which gas?", ["oxygen"], "", "")
    uncited = grade(no_gold, _answer("Oxygen.", [_source(1, "Leaf", "Leaves make oxygen.", False)]))
    assert uncited["gold_retrieved"] is None
    assert uncited["citation_precision"] is None
    assert uncited["supported"] == 0.0  # a content word said, nothing cited to back it
    cited = grade(CAPITAL, _answer("Paris.", [PARIS]))
    summary = summarize(
        [
            Graded(no_gold, _answer("Oxygen.", []), uncited, 1.0),
            Graded(CAPITAL, _answer("Paris.", [PARIS]), cited, 3.0),
        ]
    )
    assert summary["all"]["questions"] == 2
    assert summary["all"]["gold_retrieved"] == 1.0  # over the one question naming its gold
    assert summary["all"]["contains"] == 1.0
    assert summary["all"]["median_seconds"] == 2.0
    assert set(summary) == {"all", "capital"}
    assert summary["capital"]["questions"] == 1
