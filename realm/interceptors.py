"""The one place where domain errors become gRPC status codes, plus per-RPC access logs.

Servicers and the core raise ``realm.errors`` classes; this interceptor aborts the call with the
matching code and the error's message. Anything unexpected is logged with its traceback and
reaches the caller as INTERNAL with only the request id, never a traceback.
"""

import asyncio
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc import aio

from realm import errors, tracing
from realm.logs import request_id
from realm.metrics import RELAYED_KEY, MethodMetrics, for_method
from realm.status import status_of

_LOGGER = logging.getLogger("realm.rpc")
# Services that report on the server rather than use it: never refused by admission (health
# must answer while the server is full or loading), nor wrapped by the error mapping.
_OPEN_SERVICES = ("/grpc.health", "/grpc.reflection")


class Admission:
    """Decides whether a call may run now. Until the service is ``ready`` (and once it starts
    to stop) every call gets UNAVAILABLE, which clients retry: a restarted retriever listens
    before its collections are loaded, and would otherwise answer NOT_FOUND for a collection
    that exists. Past a cap on calls in progress, in total or per method, a call gets
    RESOURCE_EXHAUSTED at once. Health and reflection never pass through here: gRPC's own
    ``maximum_concurrent_rpcs`` counted them, so a few stuck streams made a Kubernetes probe
    fail and the pod restart. Runs on the event loop only, so plain counters suffice."""

    def __init__(self, max_calls: int, max_per_method: Mapping[str, int] | None = None) -> None:
        self.max_calls = max_calls
        self.max_per_method = dict(max_per_method or {})
        self.ready = False
        self.calls = 0
        self.per_method: dict[str, int] = {}

    @contextmanager
    def held(self, method: str, metrics: MethodMetrics) -> Iterator[None]:
        if not self.ready:
            metrics.refused("not_ready")
            raise errors.Unavailable("the server is loading or shutting down; retry shortly")
        if self.calls >= self.max_calls:
            metrics.refused("server_full")
            raise errors.ResourceExhausted(
                f"{self.calls} calls are in progress, the server's max_concurrent_rpcs="
                f"{self.max_calls}; retry shortly"
            )
        cap = self.max_per_method.get(method)
        running = self.per_method.get(method, 0)
        if cap is not None and running >= cap:
            metrics.refused("method_full")
            raise errors.ResourceExhausted(
                f"{running} {method.rsplit('/', 1)[-1]} calls are in progress, this server's "
                f"limit; retry shortly"
            )
        self.calls += 1
        self.per_method[method] = running + 1
        metrics.started()
        try:
            yield
        finally:
            self.calls -= 1
            self.per_method[method] -= 1
            metrics.ended()


class _CallScope:
    """Sets the request id, times the call, records its metrics and span, and turns exceptions
    into statuses."""

    def __init__(self, method: str, context: aio.ServicerContext[Any, Any]) -> None:
        self.method = method
        self.context = context
        self.invocation = context.invocation_metadata()
        metadata = dict(self.invocation or ())
        self.metrics = for_method(method, counted=RELAYED_KEY not in metadata)
        self.rid = str(metadata.get("x-request-id") or uuid.uuid4().hex[:16])
        self.started = time.perf_counter()

    def __enter__(self) -> "_CallScope":
        self.token = request_id.set(self.rid)
        self.span_scope = tracing.server_span(self.method, self.invocation)
        self.span = self.span_scope.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.span_scope.__exit__(*exc)
        request_id.reset(self.token)

    async def fail(self, error: BaseException) -> None:
        if isinstance(error, errors.RealmError):
            code, message = status_of(error), str(error)
            if code is grpc.StatusCode.INTERNAL:
                _LOGGER.error("%s failed: %s", self.method, message)
        else:
            code = grpc.StatusCode.INTERNAL
            message = f"internal error (request id {self.rid}); the server log has the details"
            _LOGGER.exception("%s raised", self.method)
        self.log(code)
        await self.context.abort(code, message)

    def log(self, code: grpc.StatusCode) -> None:
        """Records the call's end: metrics, span status, and a log line. Failed calls log at
        INFO; successful ones at DEBUG (logging each one costs a noticeable share of a fast
        search; docs/benchmarks.md)."""
        seconds = time.perf_counter() - self.started
        self.metrics.finished(code.name, seconds)
        tracing.set_grpc_status(self.span, code.name, code.value[0])
        level = logging.DEBUG if code is grpc.StatusCode.OK else logging.INFO
        if not _LOGGER.isEnabledFor(level):
            return
        duration = round(seconds * 1000, 2)
        _LOGGER.log(
            level,
            "%s %s",
            self.method,
            code.name,
            extra={"method": self.method, "code": code.name, "duration_ms": duration},
        )


def _is_abort(error: BaseException) -> bool:
    # context.abort() raises this; it already carries the status and must pass through.
    return isinstance(error, aio.AbortError)


class ErrorInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Wraps every handler of the server (health and reflection pass through untouched):
    admission, request id, access log and the mapping of errors to statuses."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        # grpc's handler types describe the sync API; aio handlers hold coroutines, hence Any.
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_OPEN_SERVICES):
            return handler
        if handler.unary_unary or handler.stream_unary:
            return _wrap_single_response(handler, method, self.admission)
        return _wrap_streaming_response(handler, method, self.admission)


class _Undecodable:
    """Stands for a request message that did not parse, so the call can fail with
    INVALID_ARGUMENT: a deserializer that raises makes gRPC answer UNKNOWN with a class name."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def refuse(self) -> errors.InvalidArgument:
        return errors.InvalidArgument(
            f"the request is not a valid message ({self.error}); string fields must be UTF-8"
        )


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as error:
            return _Undecodable(error)

    return parse


def _checked(request: Any) -> Any:
    """The request itself, or (a stream of) it with undecodable messages raising."""
    if isinstance(request, _Undecodable):
        raise request.refuse()
    if isinstance(request, AsyncIterator):

        async def messages() -> AsyncIterator[Any]:
            async for message in request:
                if isinstance(message, _Undecodable):
                    raise message.refuse()
                yield message

        return messages()
    return request


def _wrap_single_response(handler: Any, method: str, admission: Admission) -> Any:
    behavior = handler.unary_unary or handler.stream_unary

    async def wrapped(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        with _CallScope(method, context) as scope:
            try:
                with admission.held(method, scope.metrics):
                    response = await behavior(_checked(request), context)
            except asyncio.CancelledError:
                scope.log(grpc.StatusCode.CANCELLED)
                raise
            except Exception as error:
                if _is_abort(error):
                    scope.log(context.code())
                    raise
                await scope.fail(error)
                raise
            scope.log(grpc.StatusCode.OK)
            return response

    return _same_kind(handler, wrapped, _tolerant(handler.request_deserializer))


def _wrap_streaming_response(handler: Any, method: str, admission: Admission) -> Any:
    behavior = handler.unary_stream or handler.stream_stream

    async def wrapped(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        with _CallScope(method, context) as scope:
            try:
                with admission.held(method, scope.metrics):
                    async for item in behavior(_checked(request), context):
                        yield item
            except asyncio.CancelledError:
                scope.log(grpc.StatusCode.CANCELLED)
                raise
            except Exception as error:
                if _is_abort(error):
                    scope.log(context.code())
                    raise
                await scope.fail(error)
                raise
            scope.log(grpc.StatusCode.OK)

    return _same_kind(handler, wrapped, _tolerant(handler.request_deserializer))


class BearerTokenInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses calls without ``authorization: Bearer <token>`` (UNAUTHENTICATED). Health stays
    open, so probes and load balancers need no secret; reflection, which describes the whole
    API, does not."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith("/grpc.health"):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        presented = str(metadata.get("authorization", "")).encode()
        if hmac.compare_digest(presented, self._expected):
            return handler
        return _same_kind(
            handler,
            _refusal(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or wrong bearer token; send 'authorization: Bearer <token>'",
            ),
        )


def _refusal(handler: Any, code: grpc.StatusCode, message: str) -> Any:
    if handler.unary_unary or handler.stream_unary:

        async def refuse(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            await context.abort(code, message)

        return refuse

    async def refuse_stream(
        request: Any, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        nothing: tuple[Any, ...] = ()
        for item in nothing:  # makes this an async generator, like the handler it replaces
            yield item
        await context.abort(code, message)

    return refuse_stream


def _same_kind(
    handler: Any, behavior: Any, request_deserializer: Callable[[bytes], Any] | None = None
) -> Any:
    """A handler of the same streaming kind and codecs as ``handler``, running ``behavior``
    (with ``request_deserializer`` in place of the handler's own when given)."""
    if handler.unary_unary:
        factory = grpc.unary_unary_rpc_method_handler
    elif handler.stream_unary:
        factory = grpc.stream_unary_rpc_method_handler
    elif handler.unary_stream:
        factory = grpc.unary_stream_rpc_method_handler
    else:
        factory = grpc.stream_stream_rpc_method_handler
    return factory(
        behavior,
        request_deserializer=request_deserializer or handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
