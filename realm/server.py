"""Server bootstrap shared by both services.

Builds a ``grpc.aio`` server with explicit message-size and concurrency limits, the error
interceptor, ``grpc.health.v1`` (NOT_SERVING until the service says it is ready) and optional
reflection, then runs it until SIGTERM/SIGINT: stop accepting, let in-flight calls finish within
the grace period, run the service's flush, exit 0.
"""

import asyncio
import logging
import signal
import socket
import ssl
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client.registry import Collector

from realm import tracing
from realm.interceptors import Admission, BearerTokenInterceptor, ErrorInterceptor
from realm.metrics import MetricsEndpoint
from realm.ports import RETRIEVER_PORT
from realm.settings import setting

_LOGGER = logging.getLogger(__name__)
OVERALL_HEALTH = ""  # the empty service name is the server as a whole
HealthServicer: Any = health.aio.HealthServicer  # type: ignore[attr-defined]  # untyped alias
# The longest any connection setting may be: gRPC keeps milliseconds in a signed 32-bit int.
MAX_CONNECTION_SECONDS = 2_000_000.0


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """Transport limits and lifecycle settings common to every ReaLM server."""

    host: str = setting("127.0.0.1", help="Address to listen on (0.0.0.0: every interface).")
    port: int = setting(RETRIEVER_PORT, help="Port to listen on; 0 picks a free one.")
    max_message_bytes: int = setting(
        64 * 1024 * 1024,
        help="Largest request or response; bigger gets RESOURCE_EXHAUSTED.",
    )
    max_concurrent_rpcs: int = setting(
        256,
        help="Calls in progress at once (health and reflection never count); one more is "
        "refused at once with RESOURCE_EXHAUSTED.",
    )
    grace_seconds: float = setting(
        10.0, help="On SIGTERM, how long calls in flight may take to finish."
    )
    reflection: bool = setting(False, help="Serve gRPC reflection (for grpcurl).")
    tls_cert_file: Path | None = setting(
        None, flag="tls-cert", env="REALM_TLS_CERT", help="PEM certificate chain (TLS)."
    )
    tls_key_file: Path | None = setting(
        None, flag="tls-key", env="REALM_TLS_KEY", help="PEM private key of --tls-cert."
    )
    tls_client_ca_file: Path | None = setting(
        None,
        flag="tls-client-ca",
        env="REALM_TLS_CLIENT_CA",
        help="PEM CA bundle: require client certificates signed by it (mutual TLS).",
    )
    auth_token: str | None = setting(
        None,
        env="REALM_TOKEN",
        secret=True,
        help="Token every call but health must carry as 'authorization: Bearer TOKEN'.",
    )
    log_level: str = setting("INFO", help="DEBUG, INFO, WARNING or ERROR.")
    metrics_port: int | None = setting(
        None,
        help="Serve Prometheus metrics over HTTP on this port at /metrics (same host as the "
        "gRPC port); off when unset.",
    )
    # Connection management (docs/limits.md, "Connections"). The server pings a connection that
    # has been silent for keepalive_s and drops it when no answer comes within
    # keepalive_timeout_s, so half-open connections of vanished clients do not pile up.
    keepalive_s: float = setting(
        60.0, flag="keepalive-seconds", help="Ping a connection silent this long."
    )
    keepalive_timeout_s: float = setting(
        20.0, flag="keepalive-timeout-seconds", help="Drop a pinged connection silent this long."
    )
    # Clients of this project ping every 60 s; one pinging more often is sent GOAWAY.
    min_client_ping_interval_s: float = setting(
        10.0,
        flag="min-client-ping-seconds",
        help="The most often a client may ping a connection without calls.",
    )
    max_connection_idle_s: float = setting(
        1800.0,
        flag="max-connection-idle-seconds",
        help="Close a connection with no call for this long (clients reconnect).",
    )
    # Recycling connections spreads clients again over read workers and replicas that started
    # after them; calls in flight get the grace to finish (a Compact of a large collection is
    # long, and new calls move to a new connection at once whatever the grace).
    max_connection_age_s: float = setting(
        1800.0,
        flag="max-connection-age-seconds",
        help="Recycle connections after this age (+-10% jitter).",
    )
    max_connection_age_grace_s: float = setting(
        3600.0,
        flag="max-connection-age-grace-seconds",
        help="How long calls on a recycled connection may still take.",
    )

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port={self.port} is outside 0..65535")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port={self.metrics_port} is outside 0..65535")
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes={self.max_message_bytes} is below 1024")
        if self.max_concurrent_rpcs < 1:
            raise ValueError(f"max_concurrent_rpcs={self.max_concurrent_rpcs} must be >= 1")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS needs both a certificate file and a key file")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("mutual TLS (a client CA) needs the server's own TLS cert and key")
        for path in (self.tls_cert_file, self.tls_key_file, self.tls_client_ca_file):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file {path} does not exist")
        if self.tls_cert_file is not None and self.tls_key_file is not None:
            _check_key_pair(self.tls_cert_file, self.tls_key_file, self.tls_client_ca_file)
        if self.auth_token is not None and len(self.auth_token) < 16:
            raise ValueError("auth_token is shorter than 16 characters; use a long random secret")
        for name in (
            "keepalive_s",
            "keepalive_timeout_s",
            "min_client_ping_interval_s",
            "max_connection_idle_s",
            "max_connection_age_s",
            "max_connection_age_grace_s",
        ):
            value = getattr(self, name)
            if not 0.001 <= value <= MAX_CONNECTION_SECONDS:
                raise ValueError(
                    f"{name}={value} is outside 0.001..{MAX_CONNECTION_SECONDS:.0f} seconds"
                )

    def grpc_options(self, reuse_port: bool = False) -> list[tuple[str, int]]:
        """The channel arguments of the server (every name is one gRPC knows: a test checks).

        ``reuse_port`` shares the port with other processes of this server (its read workers);
        off otherwise, so that a second server started on a port in use fails instead of
        splitting its traffic."""
        return [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.so_reuseport", int(reuse_port)),
            ("grpc.keepalive_time_ms", _millis(self.keepalive_s)),
            ("grpc.keepalive_timeout_ms", _millis(self.keepalive_timeout_s)),
            # Keep pinging a silent peer during a long call: how a dead client is noticed.
            ("grpc.http2.max_pings_without_data", 0),
            # Clients' keepalive pings: allowed without calls and as often as the interval;
            # two pings too early are forgiven before the connection is closed.
            ("grpc.keepalive_permit_without_calls", 1),
            (
                "grpc.http2.min_ping_interval_without_data_ms",
                _millis(self.min_client_ping_interval_s),
            ),
            ("grpc.http2.max_ping_strikes", 2),
            ("grpc.max_connection_idle_ms", _millis(self.max_connection_idle_s)),
            ("grpc.max_connection_age_ms", _millis(self.max_connection_age_s)),
            ("grpc.max_connection_age_grace_ms", _millis(self.max_connection_age_grace_s)),
        ]

    def credentials(self) -> grpc.ServerCredentials | None:
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        client_ca = self.tls_client_ca_file
        return grpc.ssl_server_credentials(
            [(self.tls_key_file.read_bytes(), self.tls_cert_file.read_bytes())],
            root_certificates=None if client_ca is None else client_ca.read_bytes(),
            require_client_auth=client_ca is not None,
        )


def _check_key_pair(cert: Path, key: Path, client_ca: Path | None) -> None:
    """Loads the TLS files as Python's ssl module would, so a bad or mismatched file stops
    start-up naming the file; gRPC only reports that the port could not be bound."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as error:
        raise ValueError(
            f"TLS: certificate {cert} and key {key} cannot be used together ({error.reason}); "
            "give a PEM certificate chain and the PEM private key it was issued for"
        ) from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except ssl.SSLError as error:
            raise ValueError(
                f"TLS: client CA {client_ca} is not a PEM certificate bundle ({error.reason})"
            ) from None


def _millis(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def refuse_port_in_use(host: str, port: int) -> None:
    """Fails when ``host:port`` is taken. A server sharing its port with its own workers binds
    with ``SO_REUSEPORT``, which would also let a second such server join the port silently and
    take half its connections: it checks first, binding without the option."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As grpc does: a port left in TIME_WAIT by the previous run is free; a listener is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise OSError(
                f"could not bind {host}:{port} ({error.strerror}); is another server on it?"
            ) from error


class RunningServer:
    """A started server: its bound port and the health servicer to flip when ready."""

    def __init__(
        self,
        server: aio.Server,
        port: int,
        health_servicer: Any,
        service_names: Sequence[str],
        admission: Admission,
        loopback_port: int | None = None,
    ) -> None:
        self.server = server
        self.port = port
        self.loopback_port = loopback_port
        self.health = health_servicer
        self.service_names = service_names
        self._admission = admission

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self._admission.ready = serving
        for name in (OVERALL_HEALTH, *self.service_names):
            await self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        await self.set_serving(False)
        await self.server.stop(grace)


async def start_server(
    options: ServerOptions,
    register: Callable[[aio.Server], None],
    service_names: Sequence[str],
    loopback_port: bool = False,
    *,
    reuse_port: bool = False,
    method_caps: Mapping[str, int] | None = None,
) -> RunningServer:
    """Creates, binds and starts the server; health reports NOT_SERVING until ``set_serving``.

    ``loopback_port`` also binds a plaintext port on 127.0.0.1 that the OS picks, for this
    server's own worker processes (the interceptors, bearer token included, guard it too).
    ``reuse_port`` shares the port with those workers (``ServerOptions.grpc_options``).
    ``method_caps`` are tighter caps for particular methods
    (``{"/realm.v1.RetrieverService/Upsert": 4}``), whose calls each hold much memory or time.
    """
    interceptors: list[aio.ServerInterceptor] = []  # type: ignore[type-arg]
    if options.auth_token:
        interceptors.append(BearerTokenInterceptor(options.auth_token))
    admission = Admission(options.max_concurrent_rpcs, method_caps or {})
    interceptors.append(ErrorInterceptor(admission))
    server = aio.server(interceptors=interceptors, options=options.grpc_options(reuse_port))
    register(server)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if options.reflection:
        reflection.enable_server_reflection(
            (*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
    address = f"{options.host}:{options.port}"
    credentials = options.credentials()
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"could not bind {options.host}:{options.port}; is the port in use?")
    internal = server.add_insecure_port("127.0.0.1:0") if loopback_port else None
    if internal == 0:
        raise OSError("could not bind a loopback port for the worker processes")
    await server.start()
    running = RunningServer(server, port, health_servicer, service_names, admission, internal)
    await running.set_serving(False)
    _LOGGER.info("listening on %s:%d", options.host, port)
    return running


async def serve_until_signal(
    options: ServerOptions,
    register: Callable[[aio.Server], None],
    service_names: Sequence[str],
    load: Callable[[RunningServer], Coroutine[Any, Any, None]],
    flush: Callable[[], Coroutine[Any, Any, None]],
    before_stop: Callable[[], Coroutine[Any, Any, None]] | None = None,
    loopback_port: bool = False,
    *,
    reuse_port: bool = False,
    method_caps: Mapping[str, int] | None = None,
    telemetry_name: str,
    collectors: Sequence[Collector] = (),
    worker_metrics: Path | None = None,
) -> None:
    """Runs a service for its whole life: start, load, serve, drain on a signal, flush.

    ``before_stop`` runs when the signal arrives, while this server still answers (the
    retriever stops its workers there, whose calls it may still be serving).
    ``telemetry_name`` is the service's name in traces; ``collectors`` read the service's state
    when Prometheus scrapes (with ``options.metrics_port`` set), and the read workers announce
    their own figures in ``worker_metrics``.
    """
    tracing.configure(telemetry_name)
    endpoint = (
        None
        if options.metrics_port is None
        else MetricsEndpoint(options.host, options.metrics_port, collectors, worker_metrics)
    )
    try:
        await _serve(
            options,
            register,
            service_names,
            load,
            flush,
            before_stop,
            loopback_port,
            reuse_port=reuse_port,
            method_caps=method_caps,
        )
    finally:
        if endpoint is not None:
            endpoint.close()
        tracing.shutdown()


async def _serve(
    options: ServerOptions,
    register: Callable[[aio.Server], None],
    service_names: Sequence[str],
    load: Callable[[RunningServer], Coroutine[Any, Any, None]],
    flush: Callable[[], Coroutine[Any, Any, None]],
    before_stop: Callable[[], Coroutine[Any, Any, None]] | None,
    loopback_port: bool,
    *,
    reuse_port: bool,
    method_caps: Mapping[str, int] | None,
) -> None:
    running = await start_server(
        options,
        register,
        service_names,
        loopback_port,
        reuse_port=reuse_port,
        method_caps=method_caps,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loader = asyncio.create_task(load(running))
    waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({loader, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if loader in done:
        loader.result()  # a failed load is fatal: raise it
        await running.set_serving(True)
        _LOGGER.info("serving")
        await waiter
    else:
        loader.cancel()
    if before_stop is not None:
        await before_stop()
    _LOGGER.info("shutting down: draining in-flight calls for up to %.1fs", options.grace_seconds)
    await running.stop(options.grace_seconds)
    await flush()
    _LOGGER.info("stopped cleanly")
