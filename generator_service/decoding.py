"""Decoding one request: how it samples, which token it takes next, when it stops, and which
part of its text is safe to stream.

The scheduler owns the model and the batch; everything here works one row at a time and knows
nothing of caches or batches, so the same rules serve the batched path and ``model.generate``.
"""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import PreTrainedTokenizerBase

from realm.generator.grounding import CopyConstraint
from realm.generator.prompt_lookup import PromptLookup
from realm.generator.speculation import ConfirmationRate

FinishReason = Literal["stop", "length", "stop_sequence", "cancelled"]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How one request decodes; validated (``validation``) before it gets here."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True, slots=True)
class Delta:
    """The next piece of text of one request."""

    text: str


@dataclass(frozen=True, slots=True)
class Finished:
    """The end of one request: the whole text (the deltas joined) and its counts."""

    text: str
    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    first_token_at: float
    finished_at: float
    # When the engine received the request and when its prefill began (perf_counter seconds).
    submitted_at: float = 0.0
    prefill_started_at: float = 0.0


Event = Delta | Finished


@dataclass(eq=False)
class Job:
    """One request being decoded: its prompt, what it generated and streamed so far."""

    prompt_ids: list[int]
    params: SamplingParams
    post: Callable[[Event | BaseException], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    generated: list[int] = field(default_factory=list)
    emitted: str = ""
    submitted_at: float = field(default_factory=time.perf_counter)
    prefill_started_at: float = 0.0
    first_token_at: float = 0.0
    sampler: torch.Generator | None = None
    drafter: PromptLookup | None = None  # greedy, unconstrained rows of a speculating engine
    constraint: CopyConstraint | None = None  # strict grounding: only copies of the sources
    confirmation: ConfirmationRate = field(default_factory=ConfirmationRate)

    def push_text(self, text: str, final: bool) -> None:
        """Emits what is new in ``text`` as a delta, holding back what may still change."""
        safe = len(text) if final else stable_length(text, self.params.stop)
        if safe > len(self.emitted):
            piece = text[len(self.emitted) : safe]
            self.emitted += piece
            self.post(Delta(piece))


def stable_length(text: str, stops: tuple[str, ...]) -> int:
    """How much of ``text`` can be sent: not a partial UTF-8 character, not a stop's prefix."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    hold = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, end), 0, -1):
            if text[end - size : end] == stop[:size]:
                hold = max(hold, size)
                break
    return end - hold


class StopCriteria:
    """Records a row's tokens and decides when it ends: end of sequence, a stop string (cut
    before it), its token budget, or cancellation. Every ending posts one ``Finished``."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, eos_token_ids: frozenset[int]) -> None:
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids

    def accept(self, job: Job, token: int) -> bool:
        """Records one token; returns whether the row goes on decoding."""
        if job.cancelled.is_set():
            return False
        if token in self.eos_token_ids:
            self.finish(job, self.decode(job.generated), "stop")
            return False
        job.generated.append(token)
        if job.drafter is not None:
            job.drafter.append(token)
        if job.constraint is not None:
            job.constraint.advance(token)
        text = self.decode(job.generated)
        for stop in job.params.stop:
            at = text.find(stop, max(0, len(job.emitted) - len(stop)))
            if at >= 0:
                self.finish(job, text[:at], "stop_sequence")
                return False
        if len(job.generated) >= job.params.max_new_tokens:
            self.finish(job, text, "length")
            return False
        job.push_text(text, final=False)
        return True

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def finish(self, job: Job, text: str, reason: FinishReason) -> None:
        job.push_text(text, final=True)
        job.post(
            Finished(
                text=job.emitted,
                reason=reason,
                prompt_tokens=len(job.prompt_ids),
                completion_tokens=len(job.generated),
                first_token_at=job.first_token_at or time.perf_counter(),
                finished_at=time.perf_counter(),
                submitted_at=job.submitted_at,
                prefill_started_at=job.prefill_started_at or job.submitted_at,
            )
        )


def choose(logits: torch.Tensor, rows: list[Job]) -> list[int]:
    """The next token of each row: greedy rows take the argmax, sampling rows draw from their
    own seeded generator; a constrained row chooses among the tokens its constraint allows."""
    chosen = logits.argmax(dim=-1).tolist()
    for i, row in enumerate(rows):
        if not row.params.greedy or row.constraint is not None:
            chosen[i] = pick(logits[i], row)
    return [int(token) for token in chosen]


def pick(logits: torch.Tensor, row: Job) -> int:
    """One row's next token from its logits (one position), within its constraint if any."""
    if row.constraint is not None:
        logits = row.constraint.mask(logits)
    if row.params.greedy:
        return int(logits.argmax())
    return sample(logits.float(), row.params, row.sampler)


def sampler(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    """A sampling row's own random generator (seeded when the request gave a seed)."""
    if params.greedy:
        return None
    generator = torch.Generator(device=device)
    if params.seed is not None:
        generator.manual_seed(params.seed)
    else:
        generator.seed()
    return generator


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token drawn at the row's temperature, from its top-p nucleus."""
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        ordered, order = probs.sort(descending=True)
        outside = ordered.cumsum(dim=-1) - ordered > params.top_p
        ordered[outside] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, ordered)
    return int(torch.multinomial(probs, 1, generator=generator))
