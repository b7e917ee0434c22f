"""Runs the retriever service: configuration, registry, servicer and the shared bootstrap."""

import asyncio
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from grpc import aio
from threadpoolctl import threadpool_limits

from realm.files import lock_directory
from realm.retriever.collection import DEFAULT_COMPACT_THRESHOLD
from realm.retriever.embedder import DEFAULT_MODEL, load_encoder
from realm.retriever.registry import Registry
from realm.retriever.servicer import SERVICE_NAME, UPSERT_METHOD, RetrieverServicer
from realm.retriever.settings import Limits
from realm.retriever.workers import MAX_WORKERS, WorkerPool
from realm.server import RunningServer, ServerOptions, refuse_port_in_use, serve_until_signal
from realm.v1 import retriever_pb2_grpc

_LOGGER = logging.getLogger(__name__)
DEFAULT_PORT = 50051


@dataclass(frozen=True, slots=True)
class RetrieverConfig:
    """Everything the retriever needs to start, validated before anything binds or loads."""

    data_dir: Path
    server: ServerOptions = field(default_factory=lambda: ServerOptions(port=DEFAULT_PORT))
    limits: Limits = field(default_factory=Limits)
    # Loaded at start-up so the first query does not pay for it.
    preload_model: str = DEFAULT_MODEL
    # Tail passages plus tombstones that start a background generation build.
    compact_threshold: int = DEFAULT_COMPACT_THRESHOLD
    # Processes answering on the port: this one (the only writer) and workers - 1 read workers.
    workers: int = 1
    # Embedding models a client may choose for a new collection (the packaged default always
    # may); each is loaded at start-up, so a model that cannot load stops the server at once.
    embedding_models: tuple[str, ...] = (DEFAULT_MODEL,)

    def __post_init__(self) -> None:
        if self.compact_threshold < 1:
            raise ValueError(
                f"compact_threshold={self.compact_threshold} must be >= 1 (tail passages plus "
                "tombstones that start a generation build)"
            )
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ValueError(
                f"workers={self.workers} is outside 1..{MAX_WORKERS}; one per core is the most "
                "that helps"
            )


async def serve(config: RetrieverConfig) -> None:
    # numpy's BLAS threads and torch's OpenMP threads fight when they alternate in one process:
    # a dense query (encode, then matrix-vector) took 73 ms instead of 24 ms on 2 cores. The server
    # gets its parallelism from concurrent requests, so single-threaded BLAS is also the faster
    # choice under load.
    threadpool_limits(1, user_api="blas")
    with_workers = config.workers > 1
    if with_workers:
        refuse_port_in_use(config.server.host, config.server.port)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_directory(config.data_dir)  # before anything reads or repairs the directory
    try:
        await _serve_locked(config, with_workers)
    finally:
        os.close(lock)


async def _serve_locked(config: RetrieverConfig, with_workers: bool) -> None:
    registry = Registry(
        config.data_dir,
        load_encoder,
        config.limits.max_collections,
        config.compact_threshold,
        config.embedding_models,
    )
    servicer = RetrieverServicer(registry, config.limits)
    options = replace(
        config.server,
        reuse_port=with_workers,
        max_concurrent_per_method={UPSERT_METHOD: config.limits.max_concurrent_upserts},
    )
    pool = WorkerPool(config.workers - 1, config.data_dir, config.limits, config.preload_model)

    def register(server: aio.Server) -> None:
        retriever_pb2_grpc.add_RetrieverServiceServicer_to_server(servicer, server)

    async def load(running: RunningServer) -> None:
        for model in dict.fromkeys([config.preload_model, *registry.embedding_models]):
            if model:
                await asyncio.to_thread(load_encoder, model)
        await asyncio.to_thread(registry.load_all)
        _LOGGER.info("loaded %d collections from %s", len(registry.list()), config.data_dir)
        if with_workers and running.loopback_port is not None:
            # Workers bind the port this process got (port 0 picks one) and relay to it.
            pool.start(replace(options, port=running.port), running.loopback_port)

    async def stop_workers() -> None:
        if with_workers:
            await pool.stop(config.server.grace_seconds)

    async def flush() -> None:
        registry.close()

    await serve_until_signal(
        options,
        register,
        [SERVICE_NAME],
        load,
        flush,
        before_stop=stop_workers,
        loopback_port=with_workers,
    )
