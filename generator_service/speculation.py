"""How many guessed tokens a decode step checks: the width that yields the most tokens per second.

Each step feeds every running row its last token plus up to ``width - 1`` guessed ones
(``prompt_lookup``), and keeps the guesses the model confirms. A wider step costs more: on a CPU
each extra input token of each row adds arithmetic to a step otherwise bound by reading the
weights: measured on a CPU, about 0.03 of a step's fixed cost per extra row-token (the step
times are in docs/benchmarks.md). On a GPU the step is bound by launching kernels and extra
tokens cost almost nothing.

So the engine estimates, per row, how often its guesses are confirmed, and picks the width that
maximizes expected tokens over expected cost. Where guesses are often right (answers copying
their passages) it checks several; where they are not (free text, 8 rows) it checks none and
decodes as it would without drafting; a lone row on a CPU still guesses, as checking is nearly
free there. The cost constants only need to be roughly right: a wrong one changes the choice
only near the break-even point, where either choice gives about the same throughput.
"""

from collections.abc import Sequence
from dataclasses import dataclass

# Cost of one extra input token of one row, relative to a step's fixed cost.
_TOKEN_COST = {"cpu": 0.03, "cuda": 0.002}
_DEFAULT_TOKEN_COST = 0.03

# Confirmation rate a row starts with, and how much weight that guess carries against evidence.
_PRIOR_RATE = 0.5
_PRIOR_WEIGHT = 1.0
# Evidence fades with every step, checked or not: an answer copies a span, then writes its own
# words, then copies again. A row whose guesses failed drifts back towards the prior and is
# checked again a few steps later.
_DECAY = 0.8


def token_cost(device_type: str) -> float:
    return _TOKEN_COST.get(device_type, _DEFAULT_TOKEN_COST)


@dataclass(slots=True)
class ConfirmationRate:
    """How likely a row's next guessed token is to be confirmed, from its recent steps.

    Guesses are checked in order and the first wrong one ends the check, so a step that drafted
    ``d`` and confirmed ``m`` saw ``m`` confirmations and, if ``m < d``, one rejection."""

    confirmed: float = 0.0
    checked: float = 0.0

    @property
    def rate(self) -> float:
        return (self.confirmed + _PRIOR_RATE * _PRIOR_WEIGHT) / (self.checked + _PRIOR_WEIGHT)

    def record(self, drafted: int, confirmed: int) -> None:
        """One step of the row: ``drafted`` guesses checked (0 for none), ``confirmed`` kept."""
        self.confirmed = _DECAY * self.confirmed + confirmed
        self.checked = _DECAY * self.checked + confirmed + (1 if confirmed < drafted else 0)

    def expected_tokens(self, guesses: int) -> float:
        """Tokens a step yields for this row with ``guesses`` guessed tokens: its own next
        token, plus each guess that it and every guess before it are confirmed."""
        rate = self.rate
        return sum(rate**position for position in range(guesses + 1))


def choose_width(
    rates: Sequence[ConfirmationRate], guesses: Sequence[int], cost_per_token: float
) -> int:
    """Input positions per row for the next step, 1 meaning no guesses at all.

    ``guesses[i]`` is how many tokens row ``i`` could guess; a row with fewer than ``width - 1``
    is padded, and padding costs as much as a guess."""
    rows = len(rates)
    best_width = 1
    best_rate = rows / (1 + cost_per_token * rows)
    for width in range(2, max(guesses, default=0) + 2):
        expected = sum(
            rate.expected_tokens(min(available, width - 1))
            for rate, available in zip(rates, guesses, strict=True)
        )
        tokens_per_cost = expected / (1 + cost_per_token * rows * width)
        if tokens_per_cost > best_rate:
            best_width, best_rate = width, tokens_per_cost
    return best_width


def confirmed_count(guessed: Sequence[int], chosen: Sequence[int]) -> int:
    """How many leading guessed tokens the model chose itself: ``chosen[j]`` is its choice after
    input position ``j`` (the row's last token, then the guesses in order)."""
    confirmed = 0
    while confirmed < len(guessed) and guessed[confirmed] == chosen[confirmed]:
        confirmed += 1
    return confirmed
