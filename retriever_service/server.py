"""Runs the retriever service: configuration, registry, servicer and the shared bootstrap."""

import asyncio
import logging
import os
import shutil
import socket
import tempfile
from dataclasses import replace
from functools import partial
from pathlib import Path

from grpc import aio
from threadpoolctl import threadpool_limits

from realm.files import lock_directory
from realm.retriever.embedder import EncoderSpec, load_encoder, resolve_backend
from realm.retriever.languages import default_backend
from realm.retriever.metrics import IndexCollector
from realm.retriever.registry import Registry
from realm.retriever.replication import Replication, replica_id
from realm.retriever.servicer import (
    SERVICE_NAME,
    TELEMETRY_NAME,
    UPSERT_METHOD,
    RetrieverServicer,
)
from realm.retriever.settings import ClusterOptions, RetrieverConfig
from realm.retriever.shard_servicer import SHARD_SERVICE_NAME, ShardServicer
from realm.retriever.sharded_reads import ShardedReads
from realm.retriever.trained_models import resolving
from realm.retriever.workers import WorkerPool
from realm.server import RunningServer, refuse_port_in_use, serve_until_signal
from realm.v1 import retriever_pb2_grpc, shard_pb2_grpc

_LOGGER = logging.getLogger(__name__)


async def serve(config: RetrieverConfig) -> None:
    # numpy's BLAS threads and torch's OpenMP threads fight when they alternate in one process (a
    # dense query took three times as long; docs/benchmarks.md). The server gets its parallelism
    # from concurrent requests, so single-threaded BLAS is also the faster choice under load.
    threadpool_limits(1, user_api="blas")
    with_workers = config.workers > 1
    if with_workers:
        refuse_port_in_use(config.server.host, config.server.port)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_directory(config.data_dir)  # before anything reads or repairs the directory
    # Where the read workers announce their metrics endpoints to this process (realm.metrics).
    shared_metrics = config.server.metrics_port is not None and with_workers
    metrics_dir = Path(tempfile.mkdtemp(prefix="realm-metrics-")) if shared_metrics else None
    try:
        await _serve_locked(config, with_workers, metrics_dir)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        os.close(lock)


def advertised(cluster: ClusterOptions, host: str, port: int) -> str:
    """Where other replicas reach this one: ``--advertise``, else the address it listens on,
    else (listening on every interface) its fully qualified host name, which a StatefulSet
    pod's DNS name is."""
    if cluster.advertise:
        return cluster.advertise
    if host in ("0.0.0.0", "::", "[::]"):
        return f"{socket.getfqdn()}:{port}"
    return f"{host}:{port}"


async def _serve_locked(
    config: RetrieverConfig, with_workers: bool, metrics_dir: Path | None
) -> None:
    loader = resolving(config.data_dir, partial(load_encoder, cache_dir=config.cache_dir))
    backend = resolve_backend(config.embedding_backend)
    registry = Registry(
        config.data_dir,
        loader,
        config.limits.max_collections,
        config.compact_threshold,
        config.embedding_models,
        backend,
    )
    limits = config.served_limits
    cluster = config.cluster
    replica = replica_id(config.data_dir) if cluster.enabled else ""
    replication = (
        Replication(registry, cluster, replica, config.server.auth_token)
        if cluster.enabled
        else None
    )
    sharded = ShardedReads(replication, cluster.read_wait_s) if replication is not None else None
    servicer = RetrieverServicer(
        registry, limits, replication, cluster.read_wait_s, replica, sharded
    )
    shards = ShardServicer(servicer.writes, limits, cluster.read_wait_s, replication)
    options = config.server
    preload = (
        EncoderSpec(config.preload_model, default_backend(config.preload_model, backend))
        if config.preload_model
        else None
    )
    pool = WorkerPool(
        config.workers - 1, config.data_dir, limits, preload, config.cache_dir, metrics_dir
    )

    def register(server: aio.Server) -> None:
        retriever_pb2_grpc.add_RetrieverServiceServicer_to_server(servicer, server)
        shard_pb2_grpc.add_ShardServiceServicer_to_server(shards, server)

    async def load(running: RunningServer) -> None:
        # The models the operator named; the packaged multilingual one loads on first use.
        for model in dict.fromkeys([config.preload_model, *config.embedding_models]):
            if model:
                await asyncio.to_thread(loader, EncoderSpec(model, default_backend(model, backend)))
        await asyncio.to_thread(registry.load_all)
        _LOGGER.info("loaded %d collections from %s", len(registry.list()), config.data_dir)
        if replication is not None:
            # Health stays NOT_SERVING until every collection has caught up with its log.
            await replication.start(advertised(cluster, options.host, running.port))
            _LOGGER.info("replica %s follows %d collections", replica, len(replication.feeds))
        if with_workers and running.loopback_port is not None:
            # Workers bind the port this process got (port 0 picks one) and relay to it; this
            # process serves their metrics.
            pool.start(
                replace(options, port=running.port, metrics_port=None), running.loopback_port
            )

    async def stop_workers() -> None:
        if with_workers:
            await pool.stop(config.server.grace_seconds)

    async def flush() -> None:
        if replication is not None:
            await replication.close()
        registry.close()

    await serve_until_signal(
        options,
        register,
        [SERVICE_NAME, SHARD_SERVICE_NAME],
        load,
        flush,
        before_stop=stop_workers,
        loopback_port=with_workers,
        reuse_port=with_workers,
        method_caps={UPSERT_METHOD: config.limits.max_concurrent_upserts},
        telemetry_name=TELEMETRY_NAME,
        collectors=[IndexCollector(servicer.stats)],
        worker_metrics=metrics_dir,
    )
