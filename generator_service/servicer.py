"""gRPC servicer: validates requests, admits them within the limit, converts results to messages.

Admission counts every request from arrival to its last message (retrieval, waiting for a batch
slot, generating). Past ``max_pending_requests`` a call is refused with RESOURCE_EXHAUSTED at
once, so overload shows up as a fast, retryable error rather than as timeouts.
"""

import contextlib
import math
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any

from grpc import aio

from realm.errors import InvalidArgument, ResourceExhausted, Unavailable, shown
from realm.generator.engine import SamplingParams
from realm.generator.extraction import validate_fields
from realm.generator.models import LoadedModel
from realm.generator.pipeline import Answer, AnswerRequest, Pipeline
from realm.generator.prompts import Task
from realm.generator.retrieval import SearchSpec
from realm.generator.settings import GeneratorLimits
from realm.names import collection_name
from realm.v1 import common_pb2, generator_pb2, generator_pb2_grpc

Context = aio.ServicerContext[Any, Any]
_TASKS: dict[int, Task] = {
    generator_pb2.TASK_UNSPECIFIED: "answer",
    generator_pb2.TASK_ANSWER: "answer",
    generator_pb2.TASK_SUMMARIZE: "summarize",
    generator_pb2.TASK_EXTRACT: "extract",
}
_FINISH = {
    "stop": generator_pb2.FINISH_REASON_STOP,
    "length": generator_pb2.FINISH_REASON_LENGTH,
    "stop_sequence": generator_pb2.FINISH_REASON_STOP_SEQUENCE,
    "cancelled": generator_pb2.FINISH_REASON_UNSPECIFIED,
}
_ORIGIN = {
    "model": generator_pb2.CITATION_ORIGIN_MODEL,
    "attributed": generator_pb2.CITATION_ORIGIN_ATTRIBUTED,
}


def sampling_from_proto(
    parameters: generator_pb2.GenerationParameters, limits: GeneratorLimits
) -> SamplingParams:
    max_new = (
        parameters.max_new_tokens
        if parameters.HasField("max_new_tokens")
        else limits.default_max_new_tokens
    )
    if not 1 <= max_new <= limits.max_new_tokens:
        raise InvalidArgument(
            f"parameters.max_new_tokens={max_new} is outside 1..{limits.max_new_tokens}"
        )
    temperature = parameters.temperature if parameters.HasField("temperature") else 0.0
    if not math.isfinite(temperature) or not 0.0 <= temperature <= 2.0:
        raise InvalidArgument(
            f"parameters.temperature={temperature} is outside 0..2 (0 decodes greedily)"
        )
    top_p = parameters.top_p if parameters.HasField("top_p") else 1.0
    if not math.isfinite(top_p) or not 0.0 < top_p <= 1.0:
        raise InvalidArgument(f"parameters.top_p={top_p} is outside (0, 1]")
    stops = tuple(parameters.stop)
    if len(stops) > limits.max_stop_sequences:
        raise InvalidArgument(
            f"parameters.stop has {len(stops)} strings, above {limits.max_stop_sequences}"
        )
    for stop in stops:
        if not stop or len(stop) > limits.max_stop_chars:
            raise InvalidArgument(
                f"parameters.stop contains {shown(stop)}; each stop string needs "
                f"1..{limits.max_stop_chars} characters"
            )
    return SamplingParams(
        max_new_tokens=max_new,
        temperature=temperature,
        top_p=top_p,
        seed=parameters.seed if parameters.HasField("seed") else None,
        stop=stops,
    )


def request_from_proto(
    request: generator_pb2.GenerateRequest, limits: GeneratorLimits
) -> AnswerRequest:
    """Every field checked before any work, with messages that name the field and the limit."""
    question = request.question
    if not question.strip():
        raise InvalidArgument("question is empty; ask something")
    if len(question) > limits.max_question_chars:
        raise InvalidArgument(
            f"question has {len(question)} characters, above max_question_chars="
            f"{limits.max_question_chars}"
        )
    collection_name(request.collection)
    k = request.k or limits.default_k
    if k > limits.max_k:
        raise InvalidArgument(f"k={k} is outside 1..max_k={limits.max_k}")
    if request.mode not in common_pb2.SearchMode.values():
        raise InvalidArgument(f"mode={request.mode} is not a SearchMode value")
    if request.task not in _TASKS:
        raise InvalidArgument(f"task={request.task} is not a Task value")
    task = _TASKS[request.task]
    if task == "extract":
        fields = validate_fields(list(request.fields), limits.max_fields)
    elif request.fields:
        raise InvalidArgument("fields is only used with TASK_EXTRACT; leave it empty")
    else:
        fields = []
    return AnswerRequest(
        question=question,
        search=SearchSpec(
            collection=request.collection,
            query=question,
            k=k,
            mode=request.mode or common_pb2.SEARCH_MODE_HYBRID,
            filter=dict(request.filter),
        ),
        params=sampling_from_proto(request.parameters, limits),
        task=task,
        fields=fields,
        allow_no_context=request.allow_no_context,
    )


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
                citation=c.number, start=c.start, end=c.end, origin=_ORIGIN[c.origin]
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
