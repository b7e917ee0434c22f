"""Connection options in one place: targets, TLS, bearer token, timeouts, retries, keepalive.

Both clients (sync and asyncio) and the generator's own connection to the retriever build their
channels here, so a setting means the same thing everywhere. Retries are gRPC's own retry policy
(UNAVAILABLE only, exponential backoff with jitter), never hand-written loops; several replicas
are reached through ``dns:///name`` or a list of addresses, balanced per call by round-robin
(one HTTP/2 connection would otherwise pin every call to one pod).
"""

import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

Target = str | Sequence[str]


@dataclass(frozen=True, slots=True)
class ConnectionOptions:
    """How to reach a ReaLM service. The defaults suit a plaintext loopback or in-cluster call."""

    # Seconds each call may take; None waits forever (streams of large upserts do).
    timeout: float | None = 30.0
    # Seconds a Generate or GenerateStream call may take: answers take long on a CPU.
    generate_timeout: float | None = 300.0
    # Use TLS. With no root certificate the system's trusted roots verify the server.
    tls: bool = False
    # PEM root certificate(s) to verify the server with; implies TLS.
    tls_root_certificate: bytes | None = None
    # Client certificate chain and key (PEM) for servers that require mutual TLS.
    tls_client_certificate: bytes | None = None
    tls_client_key: bytes | None = None
    # Sent as "authorization: Bearer <token>" on every call. Refused over plaintext to anything
    # but a loopback address unless allow_plaintext_token says the network is trusted.
    bearer_token: str | None = None
    allow_plaintext_token: bool = False
    # Attempts per call (1 = no retry); only UNAVAILABLE is retried.
    max_attempts: int = 4
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    # Pings on idle connections so dead peers and dropped NAT entries are noticed; None = off.
    keepalive_s: float | None = 60.0
    max_message_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 5:
            raise ValueError(f"max_attempts={self.max_attempts} is outside 1..5 (gRPC's limit)")
        for name in ("timeout", "generate_timeout"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name}={value} must be > 0 or None")
        if self.initial_backoff_s <= 0 or self.max_backoff_s < self.initial_backoff_s:
            raise ValueError("backoff must satisfy 0 < initial_backoff_s <= max_backoff_s")
        if (self.tls_client_certificate is None) != (self.tls_client_key is None):
            raise ValueError("a client certificate needs its key, and a key its certificate")

    @property
    def uses_tls(self) -> bool:
        return bool(self.tls or self.tls_root_certificate or self.tls_client_certificate)

    @classmethod
    def with_root_certificate(cls, path: Path, **settings: Any) -> "ConnectionOptions":
        return cls(tls=True, tls_root_certificate=path.read_bytes(), **settings)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Per-call metadata: the bearer token, when there is one."""
        return (("authorization", f"Bearer {self.bearer_token}"),) if self.bearer_token else ()


def grpc_target(target: Target) -> str:
    """One gRPC target: ``host:port``, ``dns:///name:port``, or a list of IP addresses
    (``["10.0.0.1:50051", "10.0.0.2:50051"]``), which becomes an ``ipv4:``/``ipv6:`` target."""
    if isinstance(target, str):
        if not target.strip():
            raise ValueError("target is empty; give HOST:PORT, dns:///NAME:PORT or a list")
        return target
    addresses = list(target)
    if not addresses:
        raise ValueError("the target list is empty; give at least one HOST:PORT")
    if len(addresses) == 1:
        return addresses[0]
    families = {_family(address) for address in addresses}
    if len(families) != 1 or None in families:
        raise ValueError(
            f"a target list must be IP addresses of one family ({addresses}); for host names "
            "use one dns:///NAME:PORT target, which resolves to every replica"
        )
    family = families.pop()
    return f"{family}:" + ",".join(addresses)


def _family(address: str) -> str | None:
    host = address.rsplit(":", 1)[0].strip("[]")
    try:
        return f"ipv{ipaddress.ip_address(host).version}"
    except ValueError:
        return None


def service_config(services: Sequence[str], options: ConnectionOptions) -> str:
    policy: dict[str, Any] = {"name": [{"service": name} for name in services]}
    if options.max_attempts > 1:
        policy["retryPolicy"] = {
            "maxAttempts": options.max_attempts,
            "initialBackoff": f"{options.initial_backoff_s}s",
            "maxBackoff": f"{options.max_backoff_s}s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
    return json.dumps({"loadBalancingConfig": [{"round_robin": {}}], "methodConfig": [policy]})


def channel_options(services: Sequence[str], options: ConnectionOptions) -> list[tuple[str, Any]]:
    settings: list[tuple[str, Any]] = [
        ("grpc.enable_retries", int(options.max_attempts > 1)),
        ("grpc.service_config", service_config(services, options)),
        ("grpc.max_receive_message_length", options.max_message_bytes),
        ("grpc.max_send_message_length", options.max_message_bytes),
        # Find a restarted server quickly instead of backing off for up to two minutes.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]
    if options.keepalive_s is not None:
        settings += [
            ("grpc.keepalive_time_ms", int(options.keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ]
    return settings


def check_token_transport(target: Target, options: ConnectionOptions) -> None:
    """Refuses a bearer token bound for plaintext to another machine, where anyone on the path
    could read it (ValueError naming the fix); a channel does this check when it is made."""
    address = grpc_target(target)
    if options.uses_tls or not options.bearer_token or options.allow_plaintext_token:
        return
    if not _loopback(address):
        raise ValueError(
            f"refusing to send the bearer token to {address} over plaintext, where anyone on "
            "the path can read it; use TLS (tls=True or tls_root_certificate) or set "
            "allow_plaintext_token=True (REALM_ALLOW_PLAINTEXT_TOKEN=1) on a network you trust"
        )


def _credentials(address: str, options: ConnectionOptions) -> grpc.ChannelCredentials | None:
    check_token_transport(address, options)
    if not options.uses_tls:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=options.tls_root_certificate,
        private_key=options.tls_client_key,
        certificate_chain=options.tls_client_certificate,
    )


def _loopback(address: str) -> bool:
    """Whether every host of a gRPC target is this machine (where plaintext stays local)."""
    hosts = address.split(":", 1)[1].split(",") if address.startswith("ipv") else [address]
    for host in hosts:
        name = host.removeprefix("dns:///").rsplit(":", 1)[0].strip("[]")
        if name == "localhost":
            continue
        try:
            if not ipaddress.ip_address(name).is_loopback:
                return False
        except ValueError:
            return False
    return True


def sync_channel(
    target: Target, services: Sequence[str], options: ConnectionOptions
) -> grpc.Channel:
    address = grpc_target(target)
    settings = channel_options(services, options)
    credentials = _credentials(address, options)
    if credentials is None:
        return grpc.insecure_channel(address, options=settings)
    return grpc.secure_channel(address, credentials, options=settings)


def aio_channel(target: Target, services: Sequence[str], options: ConnectionOptions) -> aio.Channel:
    address = grpc_target(target)
    settings = channel_options(services, options)
    credentials = _credentials(address, options)
    if credentials is None:
        return aio.insecure_channel(address, options=settings)
    return aio.secure_channel(address, credentials, options=settings)


RETRIEVER_SERVICE = "realm.v1.RetrieverService"
GENERATOR_SERVICE = "realm.v1.GeneratorService"
