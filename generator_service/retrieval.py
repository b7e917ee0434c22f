"""The generator's connection to the retriever service.

grpc.aio does not carry a caller's deadline into the calls a servicer makes, so every search gets
an explicit timeout: the smaller of the configured bound and what the generator's own caller has
left. UNAVAILABLE is retried by gRPC's retry policy with a short backoff, so a retriever that is
down is reported within a fraction of a second instead of after the caller's whole deadline; the
channel (``realm.channels``, shared with the client library) caps the reconnect backoff, so
a restarted retriever is found again quickly.
"""

from collections.abc import Mapping
from dataclasses import dataclass, replace

import grpc
from grpc import aio

from realm import errors, tracing
from realm.channels import RETRIEVER_SERVICE, ConnectionOptions, aio_channel
from realm.generator.prompts import RetrievedPassage
from realm.status import error_for
from realm.v1 import common_pb2, retriever_pb2, retriever_pb2_grpc


@dataclass(frozen=True, slots=True)
class SearchSpec:
    collection: str
    query: str
    k: int
    mode: common_pb2.SearchMode.ValueType
    filter: Mapping[str, str]


class RetrieverGateway:
    """Searches one retriever target (``host:port`` or ``dns:///name`` with round-robin)."""

    def __init__(self, target: str, timeout_s: float, options: ConnectionOptions) -> None:
        """``options`` carries TLS and the bearer token. Retries are three quick attempts, so a
        retriever that is down is reported in well under a second."""
        self.target = target
        self.timeout_s = timeout_s
        self._options = replace(options, max_attempts=3, initial_backoff_s=0.05, max_backoff_s=0.2)
        self._channel = aio_channel(target, [RETRIEVER_SERVICE], self._options)
        self._stub = retriever_pb2_grpc.RetrieverServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close(grace=None)

    async def search(self, spec: SearchSpec, time_left: float | None) -> list[RetrievedPassage]:
        timeout = self.timeout_s if time_left is None else min(self.timeout_s, time_left)
        if timeout <= 0:
            raise errors.DeadlineExceeded("the deadline ran out before retrieval could start")
        request = retriever_pb2.SearchRequest(
            collection=spec.collection,
            query=spec.query,
            k=spec.k,
            mode=spec.mode,
            filter=dict(spec.filter),
        )
        try:
            response = await self._stub.Search(
                request,
                timeout=timeout,
                metadata=(*self._options.metadata, *tracing.outgoing_metadata()),
            )
        except aio.AioRpcError as error:
            raise self._translate(error, timeout) from None
        return [
            RetrievedPassage(
                doc_id=hit.passage.doc_id,
                passage_id=hit.passage.passage_id,
                text=hit.passage.text,
                start=hit.passage.start,
                end=hit.passage.end,
                score=hit.score,
                title=hit.title,
            )
            for hit in response.hits
        ]

    def _translate(self, error: aio.AioRpcError, timeout: float) -> errors.RealmError:
        """The retriever's status as the domain error it stands for (``realm.status``, the table
        the retriever itself answered with); anything else makes the retriever unavailable."""
        code, details = error.code(), error.details() or ""
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return errors.DeadlineExceeded(
                f"retrieval from {self.target} did not finish within {timeout:.3f}s"
            )
        error_class = error_for(code)
        if error_class is errors.ResourceExhausted:
            return errors.ResourceExhausted(f"the retriever is at capacity: {details}")
        if error_class is None or error_class is errors.Unavailable:
            return errors.Unavailable(
                f"the retriever at {self.target} is unavailable ({code.name}: {details}); "
                "retry later, or set allow_no_context to answer without passages"
            )
        return error_class(details)
