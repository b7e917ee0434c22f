"""Guesses the next tokens of an answer from the text it has seen: prompt-lookup drafting.

A grounded answer copies spans of its passages ("Paris is the capital and largest city of
France"), so the tokens that followed the last few tokens' first earlier occurrence, in the prompt
or in the answer so far, are a good guess for what comes next. The engine feeds such a guess
through the model together with the last real token and keeps the prefix of it the model would
have produced anyway (see ``scheduler``), so a guess never changes an answer; a right one saves
whole decode steps (how many, on the benchmark's questions: docs/benchmarks.md).

The n-gram index is built as tokens arrive, so a guess costs a few dictionary lookups rather than
a scan of the prompt.
"""

from collections.abc import Iterable

MAX_NGRAM = 3  # 4 matched no better on the benchmark's answers; shorter n-grams are the fallback


class PromptLookup:
    """The tokens of one request (prompt, then answer) and where each short n-gram first ended."""

    def __init__(self, tokens: Iterable[int] = ()) -> None:
        self._tokens: list[int] = []
        # n-gram -> index of the token that followed its first occurrence
        self._continuations: dict[tuple[int, ...], int] = {}
        self.extend(tokens)

    def extend(self, tokens: Iterable[int]) -> None:
        for token in tokens:
            self.append(token)

    def append(self, token: int) -> None:
        end = len(self._tokens)
        for size in range(1, min(MAX_NGRAM, end) + 1):
            self._continuations.setdefault(tuple(self._tokens[end - size : end]), end)
        self._tokens.append(token)

    def propose(self, count: int) -> list[int]:
        """Up to ``count`` tokens that followed the longest n-gram ending the text, where it
        first occurred; empty when the text's last token never occurred before."""
        if count < 1:
            return []
        for size in range(min(MAX_NGRAM, len(self._tokens)), 0, -1):
            start = self._continuations.get(tuple(self._tokens[-size:]))
            if start is not None:
                return self._tokens[start : start + count]
        return []
