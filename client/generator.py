"""Synchronous client for the generator service: answers with sources, whole or streamed.

Results are dataclasses, not protobufs, so callers never depend on generated code. UNAVAILABLE
is retried by gRPC's own retry policy (a streamed call only until its first message arrives);
connection settings come from ``realm.channels.ConnectionOptions``.
"""

import json
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

import grpc

from realm.channels import GENERATOR_SERVICE, ConnectionOptions, Target, sync_channel
from realm.client.errors import from_rpc_error
from realm.client.retriever import SEARCH_MODES, Mode
from realm.v1 import generator_pb2, generator_pb2_grpc

Task = Literal["answer", "summarize", "extract"]
DEFAULT_GENERATOR_TARGET = "localhost:50052"
_TASKS: dict[str, generator_pb2.Task.ValueType] = {
    "answer": generator_pb2.TASK_ANSWER,
    "summarize": generator_pb2.TASK_SUMMARIZE,
    "extract": generator_pb2.TASK_EXTRACT,
}
_FINISH = {
    generator_pb2.FINISH_REASON_STOP: "stop",
    generator_pb2.FINISH_REASON_LENGTH: "length",
    generator_pb2.FINISH_REASON_STOP_SEQUENCE: "stop_sequence",
}


@dataclass(frozen=True, slots=True)
class Source:
    """A passage the model was given, numbered as in the prompt."""

    citation: int
    doc_id: str
    passage_id: str
    text: str
    start: int
    end: int
    score: float
    title: str
    cited: bool


@dataclass(frozen=True, slots=True)
class CitationSpan:
    """``answer[start:end]`` cites source ``citation``; origin is "model" or "attributed"."""

    citation: int
    start: int
    end: int
    origin: str


@dataclass(frozen=True, slots=True)
class ExtractedField:
    name: str
    value: str
    found: bool
    citation: int


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    sources: list[Source]
    citations: list[CitationSpan]
    finish_reason: str
    context_used: bool
    no_context_reason: str
    prompt_tokens: int
    completion_tokens: int
    timings_ms: dict[str, float]
    model: str
    fields: list[ExtractedField] = field(default_factory=list)
    extracted: dict[str, str | None] = field(default_factory=dict)

    @property
    def cited_sources(self) -> list[Source]:
        return [s for s in self.sources if s.cited]


def answer_from_proto(response: generator_pb2.GenerateResponse) -> Answer:
    origins = {
        generator_pb2.CITATION_ORIGIN_MODEL: "model",
        generator_pb2.CITATION_ORIGIN_ATTRIBUTED: "attributed",
    }
    return Answer(
        text=response.answer,
        sources=[
            Source(
                citation=s.citation,
                doc_id=s.passage.doc_id,
                passage_id=s.passage.passage_id,
                text=s.passage.text,
                start=s.passage.start,
                end=s.passage.end,
                score=s.score,
                title=s.title,
                cited=s.cited,
            )
            for s in response.sources
        ],
        citations=[
            CitationSpan(c.citation, c.start, c.end, origins.get(c.origin, "unspecified"))
            for c in response.citations
        ],
        finish_reason=_FINISH.get(response.finish_reason, "unspecified"),
        context_used=response.context_used,
        no_context_reason=response.no_context_reason,
        prompt_tokens=response.usage.prompt_tokens,
        completion_tokens=response.usage.completion_tokens,
        timings_ms={
            "retrieval": response.timings.retrieval_ms,
            "time_to_first_token": response.timings.time_to_first_token_ms,
            "generation": response.timings.generation_ms,
            "total": response.timings.total_ms,
        },
        model=response.model,
        fields=[ExtractedField(f.name, f.value, f.found, f.citation) for f in response.fields],
        extracted=json.loads(response.extracted_json) if response.extracted_json else {},
    )


def generate_request(
    question: str,
    collection: str,
    *,
    k: int = 0,
    mode: Mode = "hybrid",
    task: Task = "answer",
    fields: Sequence[str] = (),
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop: Sequence[str] = (),
    allow_no_context: bool = False,
    filter: Mapping[str, str] | None = None,
) -> generator_pb2.GenerateRequest:
    parameters = generator_pb2.GenerationParameters(stop=list(stop))
    if max_new_tokens is not None:
        parameters.max_new_tokens = max_new_tokens
    if temperature is not None:
        parameters.temperature = temperature
    if top_p is not None:
        parameters.top_p = top_p
    if seed is not None:
        parameters.seed = seed
    return generator_pb2.GenerateRequest(
        question=question,
        collection=collection,
        k=k,
        mode=SEARCH_MODES[mode],
        task=_TASKS[task],
        fields=list(fields),
        parameters=parameters,
        allow_no_context=allow_no_context,
        filter=dict(filter or {}),
    )


class GeneratorClient:
    """Talks to one generator target (``host:port``, or ``dns:///name`` for several replicas)."""

    def __init__(
        self,
        target: Target = DEFAULT_GENERATOR_TARGET,
        *,
        timeout: float | None = None,
        options: ConnectionOptions | None = None,
    ) -> None:
        """``options`` holds TLS, token, retries and keepalive (``max_attempts=1`` shows a
        replica's own failure at once); ``timeout`` overrides its ``generate_timeout``."""
        options = options or ConnectionOptions()
        self.timeout = options.generate_timeout if timeout is None else timeout
        self._info_timeout = options.timeout
        self._metadata = options.metadata
        self._channel = sync_channel(target, [GENERATOR_SERVICE], options)
        self._stub = generator_pb2_grpc.GeneratorServiceStub(self._channel)

    def __enter__(self) -> "GeneratorClient":
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def ask(self, request: generator_pb2.GenerateRequest) -> Answer:
        """The whole answer at once (build ``request`` with ``generate_request``)."""
        try:
            return answer_from_proto(
                self._stub.Generate(request, timeout=self.timeout, metadata=self._metadata)
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def ask_stream(
        self, request: generator_pb2.GenerateRequest
    ) -> Generator[str | Answer, None, None]:
        """Text pieces as they are generated, then the ``Answer``. Closing the iterator (or
        breaking out of the loop) cancels the call, which stops generation on the server."""
        call = self._stub.GenerateStream(request, timeout=self.timeout, metadata=self._metadata)
        try:
            for message in call:
                if message.HasField("final"):
                    yield answer_from_proto(message.final)
                else:
                    yield message.delta
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        finally:
            call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves it untyped

    def info(self) -> generator_pb2.InfoResponse:
        try:
            return self._stub.Info(
                generator_pb2.InfoRequest(), timeout=self._info_timeout, metadata=self._metadata
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
