"""Answer quality as SQuAD scores it: exact match and token F1 after normalisation, plus
``contains`` (a gold answer appears in the output), which suits generators that answer in full
sentences rather than short spans."""

import re
import string
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """Lower case, drop punctuation and articles, collapse whitespace (SQuAD v1.1's rules)."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    return float(any(normalize(prediction) == normalize(a) for a in answers))


def token_f1(prediction: str, answers: Sequence[str]) -> float:
    return max((_f1(prediction, a) for a in answers), default=0.0)


def contains(prediction: str, answers: Sequence[str]) -> float:
    said = f" {normalize(prediction)} "
    return float(any(normalize(a) and f" {normalize(a)} " in said for a in answers))


def _f1(prediction: str, answer: str) -> float:
    predicted, gold = normalize(prediction).split(), normalize(answer).split()
    common = sum((Counter(predicted) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)
