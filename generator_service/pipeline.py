"""One grounded-generation request from question to cited answer, free of gRPC types.

Retrieve (with the caller's remaining time), pack the prompt, stream the model's text, then
parse citations (and, for extraction, fields). The servicer turns the events into messages.

A short answer reads one passage at a time, best-ranked first, and stops at the first passage
that answers: SmolLM2-135M picks the right fact from one relevant passage far more often than
from five packed together (wikiqa-dev, docs/quality.md), and one passage makes a short prompt.
Under strict grounding every read is copy-constrained (``grounding``), so the fact is a span of
the passage, and the citation's offsets are found exactly (``spans``).
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace

from realm import errors, tracing
from realm.generator.answer_types import AnswerTypes, packaged_wordnet
from realm.generator.citations import Citation, find_citations, span_citations
from realm.generator.decoding import Delta, Finished, FinishReason, SamplingParams
from realm.generator.extraction import Field, parse_fields, to_json
from realm.generator.grounding import AnswerStyle, CopyConstraint, Grounding, Vocabulary
from realm.generator.metrics import (
    GENERATION_DURATION,
    INTER_TOKEN_LATENCY,
    QUEUE_DURATION,
    RETRIEVAL_DURATION,
    TIME_TO_FIRST_TOKEN,
)
from realm.generator.prompts import PromptBuilder, PromptKind, RetrievedPassage, Task
from realm.generator.retrieval import RetrieverGateway, SearchSpec
from realm.generator.scheduler import GenerationEngine
from realm.generator.spans import (
    REFUSAL,
    answers_kind,
    expects_number,
    is_refusal,
    new_names,
    opening_rule,
    shares_subject,
    short_answer,
    typed_opening,
)

_LOGGER = logging.getLogger(__name__)
# A field value is a name, a date or a number, not a paragraph.
EXTRACT_TOKENS_PER_FIELD = 48
# A short answer is one sentence ("The capital of Chad is N'Djamena."), cut at its line's end.
SHORT_ANSWER_TOKENS = 40
# Passages a short answer reads, one at a time, before it says the documents do not answer.
SHORT_ANSWER_READS = 3
NOT_FOUND = "Not found in the documents."
# A sentence answer is one or two sentences; a small model left alone repeats itself.
SENTENCE_ANSWER_TOKENS = 96


@dataclass(frozen=True, slots=True)
class AnswerRequest:
    """A validated request (see ``validation.request_from_proto``)."""

    question: str
    search: SearchSpec
    params: SamplingParams
    task: Task = "answer"
    fields: Sequence[str] = ()
    allow_no_context: bool = False
    grounding: Grounding = "strict"
    style: AnswerStyle = "short"


@dataclass(frozen=True, slots=True)
class Answer:
    """Everything the final response carries."""

    text: str
    passages: list[RetrievedPassage]
    citations: list[Citation]
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    passages_retrieved: int
    context_used: bool
    no_context_reason: str
    retrieval_ms: float
    time_to_first_token_ms: float
    generation_ms: float
    total_ms: float
    fields: list[Field] = field(default_factory=list)
    extracted_json: str = ""
    answered: bool = True


@dataclass(frozen=True, slots=True)
class _Run:
    """One finished generation as the pipeline needs it."""

    text: str
    passages: list[RetrievedPassage]
    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    first_token_at: float
    finished_at: float


class Pipeline:
    def __init__(
        self,
        gateway: RetrieverGateway,
        engine: GenerationEngine,
        prompts: PromptBuilder,
        answer_types: AnswerTypes | None = None,
    ) -> None:
        self.gateway = gateway
        self.engine = engine
        self.prompts = prompts
        self.answer_types = answer_types or AnswerTypes(packaged_wordnet())
        self.vocabulary = Vocabulary(engine.loaded.tokenizer, engine.loaded.eos_token_ids)

    async def run(
        self, request: AnswerRequest, time_left: Callable[[], float | None]
    ) -> AsyncIterator[str | Answer]:
        """Yields pieces of text as they are generated, then the ``Answer``."""
        started = time.perf_counter()
        passages, reason = await self._retrieve(request, time_left)
        retrieved_at = time.perf_counter()
        if not passages and not request.allow_no_context:
            text = (
                f"I could not find anything about this in collection "
                f"{request.search.collection!r}, so I cannot answer from it."
            )
            yield text
            now = time.perf_counter()
            yield Answer(
                text=text,
                passages=[],
                citations=[],
                finish_reason="stop",
                prompt_tokens=0,
                completion_tokens=0,
                passages_retrieved=0,
                context_used=False,
                no_context_reason=reason,
                retrieval_ms=_ms(started, retrieved_at),
                time_to_first_token_ms=_ms(started, now),
                generation_ms=0.0,
                total_ms=_ms(started, now),
                answered=False,
            )
            return
        if request.task == "answer" and request.style == "short" and passages:
            async for piece in self._short_answer(request, passages, started, retrieved_at):
                yield piece
            return
        if request.task == "extract":
            generation = self._extract(request, passages)
        elif request.task == "answer":
            params = replace(
                request.params,
                max_new_tokens=min(request.params.max_new_tokens, SENTENCE_ANSWER_TOKENS),
            )
            generation = self._generate(request, passages, params)
        else:
            generation = self._generate(request, passages, request.params)
        run: _Run | None = None
        async for item in generation:
            if isinstance(item, _Run):
                run = item
            else:
                yield item
        assert run is not None  # both generators end with their _Run
        text = run.text
        answer_fields: list[Field] = []
        extracted = ""
        if request.task == "extract":
            answer_fields = parse_fields(text, request.fields, run.passages)
            extracted = to_json(answer_fields)
        now = time.perf_counter()
        yield Answer(
            text=text,
            passages=run.passages,
            citations=(
                find_citations(text, run.passages, request.question, request.grounding)
                if run.passages and request.task != "extract"
                else []
            ),
            finish_reason=run.reason,
            prompt_tokens=run.prompt_tokens,
            completion_tokens=run.completion_tokens,
            passages_retrieved=len(passages),
            context_used=bool(run.passages),
            no_context_reason=reason
            or ("" if run.passages else "no passage fit into the prompt's token budget"),
            retrieval_ms=_ms(started, retrieved_at),
            time_to_first_token_ms=_ms(started, run.first_token_at),
            generation_ms=_ms(run.first_token_at, run.finished_at),
            total_ms=_ms(started, now),
            fields=answer_fields,
            extracted_json=extracted,
        )

    async def _short_answer(
        self,
        request: AnswerRequest,
        passages: list[RetrievedPassage],
        started: float,
        retrieved_at: float,
    ) -> AsyncIterator[str | Answer]:
        """Reads the passages one at a time until one answers; yields the fact, then the
        ``Answer`` citing the passage it came from (or saying that none answered)."""
        params = replace(
            request.params,
            max_new_tokens=min(request.params.max_new_tokens, SHORT_ANSWER_TOKENS),
            stop=("\n", *request.params.stop),
        )
        runs: list[_Run] = []
        text, citations, answered = NOT_FOUND, [], False
        # The sources are the passages up to the last one read (citations number them).
        sources = 1
        for number, passage in enumerate(passages[:SHORT_ANSWER_READS], start=1):
            # The best-ranked passage is always read; a later one only if it is on the subject.
            if number > 1 and not shares_subject(passage.text, request.question):
                continue
            sources = number
            span, run = await self._read(request, passage, params, runs)
            if run is None or span is None:
                continue
            text, answered = run.text[span[0] : span[1]], True
            if request.grounding != "free":
                citations = [
                    replace(c, number=number, start=c.start - span[0], end=c.end - span[0])
                    for c in span_citations(run.text, [passage], request.question, span)
                ]
            break
        yield text
        last = runs[-1]
        now = time.perf_counter()
        yield Answer(
            text=text,
            passages=passages[:sources],
            citations=citations,
            finish_reason=last.reason,
            prompt_tokens=sum(run.prompt_tokens for run in runs),
            completion_tokens=sum(run.completion_tokens for run in runs),
            passages_retrieved=len(passages),
            context_used=True,
            no_context_reason="",
            retrieval_ms=_ms(started, retrieved_at),
            time_to_first_token_ms=_ms(started, now),
            generation_ms=_ms(runs[0].first_token_at, now),
            total_ms=_ms(started, now),
            answered=answered,
        )

    async def _read(
        self,
        request: AnswerRequest,
        passage: RetrievedPassage,
        params: SamplingParams,
        runs: list[_Run],
    ) -> tuple[tuple[int, int] | None, _Run | None]:
        """One passage's short answer: the fact's span in the run's text, or None when the
        model says the passage does not answer, or its fact is not the kind the question asks
        for (``answers_kind``: no date for "when"). A strict answer that only repeats the
        question ("Chad is the capital of Chad"), or is of the wrong kind, is read again, made
        to open with a new word (or a number); if that is still not an answer, the passage
        does not hold one."""
        strict = request.grounding == "strict"
        for may_open in (None, opening_rule(request.question)) if strict else (None,):
            run = await self._run(request, passage, params, may_open)
            runs.append(run)
            if is_refusal(run.text):
                return None, None
            span = short_answer(run.text, request.question)
            if span is not None and answers_kind(request.question, run.text[span[0] : span[1]]):
                if strict:
                    return await self._of_type(request, passage, params, runs, (span, run))
                return span, run
        return None, None

    async def _of_type(
        self,
        request: AnswerRequest,
        passage: RetrievedPassage,
        params: SamplingParams,
        runs: list[_Run],
        read: tuple[tuple[int, int], _Run],
    ) -> tuple[tuple[int, int], _Run]:
        """The strict answer ``read``, or, when the question asks for a kind of thing that
        WordNet names (a continent, a capital: ``answer_types``) and the answer names none
        while the passage does, the passage read once more, made to open at one of those
        names; the answer is then that name. "Which continent is Albania located in?" is
        answered "Mediterranean Sea" from "a country in Southeast Europe ... within the
        Mediterranean Sea", and "Europe" when read again. A second read that still names
        none keeps the first answer: WordNet does not know every name ("Kyiv")."""
        question = request.question
        (span, run) = read
        if expects_number(question):
            return read
        names = await asyncio.to_thread(self.answer_types.names_for, question)
        if (
            names is None
            or new_names(run.text[span[0] : span[1]], question, names)
            or not new_names(f"{passage.title}: {passage.text}", question, names)
        ):
            return read
        typed = await self._run(request, passage, params, typed_opening(question, names))
        runs.append(typed)
        found = new_names(typed.text, question, names)
        return (found[0], typed) if found and not is_refusal(typed.text) else read

    async def _run(
        self,
        request: AnswerRequest,
        passage: RetrievedPassage,
        params: SamplingParams,
        may_open: Callable[[bytes, int], bool] | None,
    ) -> _Run:
        """One generation over one passage, run to its end."""
        run: _Run | None = None
        async for item in self._generate(request, [passage], params, may_open=may_open):
            if isinstance(item, _Run):
                run = item
        assert run is not None
        return run

    async def _generate(
        self,
        request: AnswerRequest,
        passages: list[RetrievedPassage],
        params: SamplingParams,
        field_name: str = "",
        may_open: Callable[[bytes, int], bool] | None = None,
    ) -> AsyncIterator[str | _Run]:
        """Streams one generation's text, then its ``_Run``. Extraction asks for one field,
        and the answer is forced to start with ``field_name:``. A strict answer is decoded
        under a ``CopyConstraint`` over the question and the passages in its prompt (and the
        words that say it does not know); with ``may_open``, it starts where that allows."""
        prefix = f"{field_name}:" if field_name else ""
        kind: PromptKind = request.style if request.task == "answer" else request.task
        with tracing.span("pack_prompt", passages=len(passages)):
            prompt = await asyncio.to_thread(
                self.prompts.build,
                kind,
                request.question,
                passages,
                [field_name] if field_name else [],
                params.max_new_tokens,
                bool(passages),
                prefix,
            )
        if prefix:
            yield prefix
        constraint = None
        if request.task == "answer" and request.grounding == "strict" and prompt.passages:
            sources = [request.question, REFUSAL]
            sources += [f"{p.title}: {p.text}" if p.title else p.text for p in prompt.passages]
            constraint = await asyncio.to_thread(
                CopyConstraint,
                self.vocabulary,
                sources,
                may_open,
            )
        async for event in self.engine.generate(prompt.token_ids, params, constraint):
            if isinstance(event, Delta):
                yield event.text
            else:
                _observe(event)
                yield _Run(
                    text=prefix + event.text,
                    passages=prompt.passages,
                    reason=event.reason,
                    prompt_tokens=event.prompt_tokens,
                    completion_tokens=event.completion_tokens,
                    first_token_at=event.first_token_at,
                    finished_at=event.finished_at,
                )

    async def _extract(
        self, request: AnswerRequest, passages: list[RetrievedPassage]
    ) -> AsyncIterator[str | _Run]:
        """One short generation per field, all in flight at once (so they share decode
        steps), each forced to start with ``name:`` and stopped at the end of its line. A
        small model asked for several fields at once repeats and mixes them; one line per
        generation keeps every value in its own field. Lines stream in field order."""
        params = replace(
            request.params,
            max_new_tokens=min(request.params.max_new_tokens, EXTRACT_TOKENS_PER_FIELD),
            stop=("\n", *request.params.stop),
        )

        async def one(name: str) -> _Run:
            run: _Run | None = None
            async for item in self._generate(request, passages, params, name):
                if isinstance(item, _Run):
                    run = item
            assert run is not None
            return run

        tasks = [asyncio.create_task(one(name)) for name in request.fields]
        try:
            runs: list[_Run] = []
            for task in tasks:
                run = await task
                runs.append(run)
                yield run.text.strip() + "\n"
        finally:
            for task in tasks:
                task.cancel()
        yield _Run(
            text="".join(run.text.strip() + "\n" for run in runs),
            passages=runs[0].passages,
            reason="stop",
            prompt_tokens=sum(run.prompt_tokens for run in runs),
            completion_tokens=sum(run.completion_tokens for run in runs),
            first_token_at=min(run.first_token_at for run in runs),
            finished_at=max(run.finished_at for run in runs),
        )

    async def _retrieve(
        self, request: AnswerRequest, time_left: Callable[[], float | None]
    ) -> tuple[list[RetrievedPassage], str]:
        """The passages, or none and the reason when the request allows answering without."""
        started = time.perf_counter()
        try:
            with tracing.span("retrieve", k=request.search.k):
                passages = await self.gateway.search(request.search, time_left())
        except (errors.Unavailable, errors.ResourceExhausted) as error:
            if not request.allow_no_context:
                raise
            _LOGGER.warning("answering without context: %s", error)
            return [], f"retrieval failed: {error}"
        finally:
            RETRIEVAL_DURATION.observe(time.perf_counter() - started)
        if not passages:
            return [], "the retriever found no passages for the question"
        return passages, ""


def _observe(done: Finished) -> None:
    """One generation's latencies as metrics, and its engine phases as spans."""
    TIME_TO_FIRST_TOKEN.observe(done.first_token_at - done.submitted_at)
    QUEUE_DURATION.observe(done.prefill_started_at - done.submitted_at)
    GENERATION_DURATION.observe(done.finished_at - done.submitted_at)
    if done.completion_tokens > 1:
        INTER_TOKEN_LATENCY.observe(
            (done.finished_at - done.first_token_at) / (done.completion_tokens - 1)
        )
    tracing.record("queue", done.submitted_at, done.prefill_started_at)
    tracing.record(
        "prefill", done.prefill_started_at, done.first_token_at, tokens=done.prompt_tokens
    )
    tracing.record("decode", done.first_token_at, done.finished_at, tokens=done.completion_tokens)


def _ms(start: float, end: float) -> float:
    return round(max(0.0, end - start) * 1000, 3)
