"""OpenTelemetry traces: off unless the standard ``OTEL_*`` variables ask for them.

``configure`` installs the SDK in a process when ``OTEL_TRACES_EXPORTER`` names an exporter
(``otlp`` or ``console``) or an OTLP endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); ``OTEL_SDK_DISABLED=true`` wins over both. The OTLP
exporter speaks gRPC and reads its own variables (endpoint, headers, certificates, timeout), as
every OpenTelemetry SDK does.

The trace context travels in gRPC metadata as W3C ``traceparent`` (``OTEL_PROPAGATORS`` may
choose others): the client library puts it on every call, the server interceptor takes it off,
and the generator passes it on to the retriever, so one ``realm ask`` is one trace across three
processes.

When no tracer provider is installed, every helper here returns at once: the API's no-op spans
still cost about 8 us each (docs/benchmarks.md), more than a metric observation.
"""

import os
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider, Span, SpanKind

_NO_SPAN: AbstractContextManager[None] = nullcontext()
_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_PROTOCOL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
_EXPORTERS = ("otlp", "console")
_state: dict[str, Any] = {"provider": None, "tracer": None}


def requested(environ: Mapping[str, str] = os.environ) -> tuple[str, ...]:
    """The exporters the environment asks for; empty when tracing is off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return ()
    named = environ.get("OTEL_TRACES_EXPORTER")
    if named is None:
        return ("otlp",) if any(environ.get(v) for v in _ENDPOINT_VARIABLES) else ()
    exporters = tuple(n.strip().lower() for n in named.split(",") if n.strip())
    unknown = [n for n in exporters if n not in (*_EXPORTERS, "none")]
    if unknown:
        raise ValueError(
            f"OTEL_TRACES_EXPORTER={named!r}: {', '.join(unknown)} is not an exporter ReaLM "
            f"has; use {', '.join(_EXPORTERS)} or none"
        )
    return tuple(n for n in exporters if n != "none")


def configure(service_name: str) -> bool:
    """Installs the SDK with the exporters the environment asks for; False when it asks for
    none. ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` override ``service_name``."""
    exporters = requested()
    if not exporters:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    provider = TracerProvider(resource=Resource.create(attributes))
    for name in exporters:
        if name == "console":
            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        else:
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter()))
    trace.set_tracer_provider(provider)
    return True


def check_environment() -> None:
    """Raises ValueError naming the variable when the OTEL_* settings ask for what ReaLM does
    not have (an unknown exporter, OTLP over HTTP), so a command can fail cleanly at start."""
    if "otlp" in requested():
        _check_protocol()


def _check_protocol() -> None:
    for variable in _PROTOCOL_VARIABLES:
        protocol = os.environ.get(variable)
        if protocol is not None:
            if protocol.strip().lower() != "grpc":
                raise ValueError(
                    f"{variable}={protocol!r}: ReaLM exports traces over OTLP/gRPC only; set "
                    "it to grpc and point OTEL_EXPORTER_OTLP_ENDPOINT at the collector's gRPC "
                    "port (4317 by default)"
                )
            return


def _otlp_exporter() -> Any:
    _check_protocol()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def shutdown() -> None:
    """Sends the spans still buffered; servers call it as they stop."""
    provider = trace.get_tracer_provider()
    flush = getattr(provider, "shutdown", None)
    if flush is not None:
        flush()


def _tracer() -> trace.Tracer | None:
    """The tracer of the installed provider (one installed by an application that uses the
    client library counts too), or None when there is none."""
    provider = trace.get_tracer_provider()
    if provider is _state["provider"]:
        tracer: trace.Tracer | None = _state["tracer"]
        return tracer
    tracer = (
        None
        if isinstance(provider, ProxyTracerProvider | NoOpTracerProvider)
        else provider.get_tracer("realm")
    )
    _state["provider"], _state["tracer"] = provider, tracer
    return tracer


def active() -> bool:
    return _tracer() is not None


def span(name: str, **attributes: str | int | float | bool) -> AbstractContextManager[Any]:
    """A span around a block of work, a child of the current one."""
    tracer = _tracer()
    if tracer is None:
        return _NO_SPAN
    return tracer.start_as_current_span(name, attributes=attributes)


def record(name: str, start: float, end: float, **attributes: str | int | float) -> None:
    """A span, a child of the current one, for work another thread timed: ``start`` and
    ``end`` are ``time.perf_counter()`` readings (spans take wall-clock nanoseconds)."""
    tracer = _tracer()
    if tracer is None or not start or end < start:
        return
    offset = time.time_ns() - int(time.perf_counter() * 1e9)
    done = tracer.start_span(name, start_time=offset + int(start * 1e9), attributes=attributes)
    done.end(end_time=offset + int(end * 1e9))


@contextmanager
def server_span(
    full_method: str, metadata: Iterable[tuple[str, Any]] | None
) -> Iterator[Span | None]:
    """The span of one served call, a child of the caller's span when its metadata carries
    one; made current, so the service's own spans hang below it."""
    tracer = _tracer()
    if tracer is None:
        yield None
        return
    carrier = {key: value for key, value in metadata or () if isinstance(value, str)}
    parent = propagate.extract(carrier)
    service, _, method = full_method.lstrip("/").rpartition("/")
    with tracer.start_as_current_span(
        full_method.lstrip("/"),
        context=parent,
        kind=SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
        record_exception=False,
        set_status_on_exception=False,
    ) as served:
        yield served


def set_grpc_status(served: Span | None, code_name: str, code_value: int) -> None:
    if served is None:
        return
    served.set_attribute("rpc.grpc.status_code", code_value)
    if code_name != "OK":
        served.set_status(trace.Status(trace.StatusCode.ERROR, code_name))


class ClientCall:
    """The client's span of one outgoing call and the metadata that carries it to the server.

    Not made current: a streaming call outlives the block that started it, and nothing runs
    under it in this process."""

    def __init__(self, full_method: str) -> None:
        tracer = _tracer()
        self.span: Span | None = None
        if tracer is not None:
            service, _, method = full_method.lstrip("/").rpartition("/")
            self.span = tracer.start_span(
                full_method.lstrip("/"),
                kind=SpanKind.CLIENT,
                attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
            )

    def metadata(self) -> tuple[tuple[str, str], ...]:
        if self.span is None:
            return ()
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(self.span))
        return tuple(carrier.items())

    def end(self, error: BaseException | None = None) -> None:
        if self.span is None:
            return
        if error is not None:
            self.span.record_exception(error)
            self.span.set_status(trace.Status(trace.StatusCode.ERROR, type(error).__name__))
        self.span.end()


def outgoing_metadata() -> tuple[tuple[str, str], ...]:
    """The current trace context as metadata, for a call made on behalf of the current span."""
    if _tracer() is None:
        return ()
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=otel_context.get_current())
    return tuple(carrier.items())


def current_trace_id() -> str:
    """The current trace's id in hex, for log lines; empty outside a trace."""
    if _state["tracer"] is None:
        return ""
    found = trace.get_current_span().get_span_context()
    return format(found.trace_id, "032x") if found.is_valid else ""
