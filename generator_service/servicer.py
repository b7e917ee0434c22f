"""gRPC servicer: admits requests within the limit, validates them (``validation``), converts
results to messages.

Admission counts every request from arrival to its last message (retrieval, waiting for a batch
slot, generating). Past ``max_pending_requests`` a call is refused with RESOURCE_EXHAUSTED at
once, so overload shows up as a fast, retryable error rather than as timeouts.
"""

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any

from grpc import aio

from realm.errors import ResourceExhausted, Unavailable
from realm.generator.models import LoadedModel
from realm.generator.pipeline import Answer, Pipeline
from realm.generator.settings import GeneratorLimits
from realm.generator.validation import request_from_proto
from realm.v1 import common_pb2, generator_pb2, generator_pb2_grpc

Context = aio.ServicerContext[Any, Any]
_FINISH = {
    "stop": generator_pb2.FINISH_REASON_STOP,
    "length": generator_pb2.FINISH_REASON_LENGTH,
    "stop_sequence": generator_pb2.FINISH_REASON_STOP_SEQUENCE,
    "cancelled": generator_pb2.FINISH_REASON_UNSPECIFIED,
}
_ORIGIN = {
    "model": generator_pb2.CITATION_ORIGIN_MODEL,
    "span": generator_pb2.CITATION_ORIGIN_SPAN,
}


def answer_to_proto(answer: Answer, model: str) -> generator_pb2.GenerateResponse:
    cited = {c.number for c in answer.citations}
    return generator_pb2.GenerateResponse(
        answer=answer.text,
        sources=[
            generator_pb2.Source(
                citation=number,
                passage=common_pb2.Passage(
                    passage_id=p.passage_id, doc_id=p.doc_id, text=p.text, start=p.start, end=p.end
                ),
                score=p.score,
                title=p.title,
                cited=number in cited,
            )
            for number, p in enumerate(answer.passages, start=1)
        ],
        citations=[
            generator_pb2.Citation(
                citation=c.number,
                start=c.start,
                end=c.end,
                origin=_ORIGIN[c.origin],
                source_start=c.source_start,
                source_end=c.source_end,
            )
            for c in answer.citations
        ],
        usage=generator_pb2.Usage(
            prompt_tokens=answer.prompt_tokens,
            completion_tokens=answer.completion_tokens,
            passages_retrieved=answer.passages_retrieved,
            passages_in_prompt=len(answer.passages),
        ),
        timings=generator_pb2.Timings(
            retrieval_ms=answer.retrieval_ms,
            time_to_first_token_ms=answer.time_to_first_token_ms,
            generation_ms=answer.generation_ms,
            total_ms=answer.total_ms,
        ),
        context_used=answer.context_used,
        no_context_reason=answer.no_context_reason,
        finish_reason=_FINISH[answer.finish_reason],
        fields=[
            generator_pb2.ExtractedField(
                name=f.name, value=f.value, found=f.found, citation=f.citation
            )
            for f in answer.fields
        ],
        extracted_json=answer.extracted_json,
        model=model,
        answered=answer.answered,
    )


class GeneratorServicer(generator_pb2_grpc.GeneratorServiceServicer):
    """Registered before the model loads (health says NOT_SERVING meanwhile); ``attach`` arms it."""

    def __init__(self, limits: GeneratorLimits, max_batch_size: int) -> None:
        self.limits = limits
        self.max_batch_size = max_batch_size
        self.pending = 0
        self._pipeline: Pipeline | None = None
        self._loaded: LoadedModel | None = None

    def attach(self, pipeline: Pipeline, loaded: LoadedModel) -> None:
        self._pipeline, self._loaded = pipeline, loaded

    def _ready(self) -> tuple[Pipeline, LoadedModel]:
        if self._pipeline is None or self._loaded is None:
            raise Unavailable("the model is still loading; retry when health reports SERVING")
        return self._pipeline, self._loaded

    @contextlib.contextmanager
    def _admitted(self) -> Iterator[None]:
        if self.pending >= self.limits.max_pending_requests:
            raise ResourceExhausted(
                f"{self.pending} requests are in progress, the max_pending_requests limit; "
                "retry with backoff or add generator replicas"
            )
        self.pending += 1
        try:
            yield
        finally:
            self.pending -= 1

    async def _events(
        self, request: generator_pb2.GenerateRequest, context: Context
    ) -> AsyncGenerator[str | Answer, None]:
        pipeline, _ = self._ready()
        answer_request = request_from_proto(request, self.limits)
        with self._admitted():
            async for event in pipeline.run(answer_request, context.time_remaining):
                yield event

    async def Generate(  # noqa: N802 -- gRPC method names are PascalCase
        self, request: generator_pb2.GenerateRequest, context: Context
    ) -> generator_pb2.GenerateResponse:
        # aclosing: leaving the loop at the answer closes the pipeline at once, so the request
        # leaves the admission count now rather than when the generator is collected.
        async with contextlib.aclosing(self._events(request, context)) as events:
            async for event in events:
                if isinstance(event, Answer):
                    return answer_to_proto(event, self._ready()[1].name)
        raise AssertionError("the pipeline ended without an answer")

    async def GenerateStream(  # noqa: N802
        self, request: generator_pb2.GenerateRequest, context: Context
    ) -> AsyncIterator[generator_pb2.GenerateStreamResponse]:
        async for event in self._events(request, context):
            if isinstance(event, Answer):
                yield generator_pb2.GenerateStreamResponse(
                    final=answer_to_proto(event, self._ready()[1].name)
                )
            else:
                yield generator_pb2.GenerateStreamResponse(delta=event)

    async def Info(  # noqa: N802
        self, request: generator_pb2.InfoRequest, context: Context
    ) -> generator_pb2.InfoResponse:
        pipeline, loaded = self._ready()
        return generator_pb2.InfoResponse(
            model=loaded.name,
            architecture=loaded.architecture,
            device=str(loaded.device),
            context_tokens=loaded.context_tokens,
            max_new_tokens=self.limits.max_new_tokens,
            max_k=self.limits.max_k,
            max_question_chars=self.limits.max_question_chars,
            max_batch_size=self.max_batch_size,
            max_pending_requests=self.limits.max_pending_requests,
            retriever_target=pipeline.gateway.target,
            requests_in_progress=self.pending,
            sequences_decoding=pipeline.engine.sequences_decoding,
        )
