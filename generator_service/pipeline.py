"""One grounded-generation request from question to cited answer, free of gRPC types.

Retrieve (with the caller's remaining time), pack the prompt, stream the model's text, then
parse citations (and, for extraction, fields). The servicer turns the events into messages.
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace

from realm import errors
from realm.generator.citations import Citation, find_citations
from realm.generator.decoding import Delta, FinishReason, SamplingParams
from realm.generator.extraction import Field, parse_fields, to_json
from realm.generator.prompts import PromptBuilder, RetrievedPassage, Task
from realm.generator.retrieval import RetrieverGateway, SearchSpec
from realm.generator.scheduler import GenerationEngine

_LOGGER = logging.getLogger(__name__)
# A field value is a name, a date or a number, not a paragraph.
EXTRACT_TOKENS_PER_FIELD = 48


@dataclass(frozen=True, slots=True)
class AnswerRequest:
    """A validated request (see ``validation.request_from_proto``)."""

    question: str
    search: SearchSpec
    params: SamplingParams
    task: Task = "answer"
    fields: Sequence[str] = ()
    allow_no_context: bool = False


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
    ) -> None:
        self.gateway = gateway
        self.engine = engine
        self.prompts = prompts

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
            )
            return
        if request.task == "extract":
            generation = self._extract(request, passages)
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
            citations=find_citations(text, run.passages) if run.passages else [],
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

    async def _generate(
        self,
        request: AnswerRequest,
        passages: list[RetrievedPassage],
        params: SamplingParams,
        field_name: str = "",
    ) -> AsyncIterator[str | _Run]:
        """Streams one generation's text, then its ``_Run``. Extraction asks for one field,
        and the answer is forced to start with ``field_name:``."""
        prefix = f"{field_name}:" if field_name else ""
        prompt = await asyncio.to_thread(
            self.prompts.build,
            request.task,
            request.question,
            passages,
            [field_name] if field_name else [],
            params.max_new_tokens,
            bool(passages),
            prefix,
        )
        if prefix:
            yield prefix
        async for event in self.engine.generate(prompt.token_ids, params):
            if isinstance(event, Delta):
                yield event.text
            else:
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
        try:
            passages = await self.gateway.search(request.search, time_left())
        except (errors.Unavailable, errors.ResourceExhausted) as error:
            if not request.allow_no_context:
                raise
            _LOGGER.warning("answering without context: %s", error)
            return [], f"retrieval failed: {error}"
        if not passages:
            return [], "the retriever found no passages for the question"
        return passages, ""


def _ms(start: float, end: float) -> float:
    return round(max(0.0, end - start) * 1000, 3)
