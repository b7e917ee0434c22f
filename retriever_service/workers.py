"""Read worker processes: started by the writer, sharing its port, restarted when they die.

One Python process answers on one core at most (the GIL), so ``--workers N`` starts N - 1
more processes that bind the same port with ``SO_REUSEPORT``; the kernel spreads connections
over all N. Each worker serves searches from the generation files and the store the writer
keeps (``replica.py``) and relays everything else to the writer. Workers are the writer's
children: the writer stops them first on SIGTERM (while it still answers what they relay),
restarts one that dies, and a worker whose writer is gone stops by itself.
"""

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import time
from functools import partial
from multiprocessing.process import BaseProcess
from pathlib import Path

from grpc import aio
from threadpoolctl import threadpool_limits

from realm import logs, metrics
from realm.retriever.collection import EncoderLoader
from realm.retriever.embedder import EncoderSpec, load_encoder
from realm.retriever.replica import Replicas
from realm.retriever.replica_servicer import ReplicaServicer, ShardRelay
from realm.retriever.servicer import SERVICE_NAME, TELEMETRY_NAME
from realm.retriever.settings import Limits
from realm.retriever.shard_servicer import SHARD_SERVICE_NAME
from realm.retriever.trained_models import resolving
from realm.server import RunningServer, ServerOptions, serve_until_signal
from realm.v1 import retriever_pb2_grpc, shard_pb2_grpc

_LOGGER = logging.getLogger(__name__)
_PARENT_CHECK_SECONDS = 1.0
_RESTART_DELAY_SECONDS = 1.0
_MAX_RESTART_DELAY_SECONDS = 60.0
_STABLE_SECONDS = 60.0  # a worker that ran this long died of something else: no backoff
_REFRESH_SECONDS = 0.5


def run_worker(
    data_dir: Path,
    options: ServerOptions,
    limits: Limits,
    preload: EncoderSpec | None,
    cache_dir: Path,
    writer_address: str,
    log_level: int,
    metrics_dir: Path | None,
) -> None:
    """A worker process's main (the target ``WorkerPool`` spawns). With ``metrics_dir``, the
    worker serves its figures to the writer, announced there."""
    logs.configure(logging.getLevelName(log_level))
    endpoint = None if metrics_dir is None else metrics.WorkerEndpoint(metrics_dir)
    try:
        loader = resolving(data_dir, partial(load_encoder, cache_dir=cache_dir))
        asyncio.run(_serve(data_dir, options, limits, loader, preload, writer_address))
    finally:
        if endpoint is not None:
            endpoint.close()


async def _serve(
    data_dir: Path,
    options: ServerOptions,
    limits: Limits,
    loader: EncoderLoader,
    preload: EncoderSpec | None,
    writer: str,
) -> None:
    threadpool_limits(1, user_api="blas")  # as the writer does; see server.serve
    replicas = Replicas(data_dir, loader)
    size = options.max_message_bytes
    channel = aio.insecure_channel(
        writer,
        options=[("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", size)],
    )
    servicer = ReplicaServicer(replicas, limits, channel)
    parent = os.getppid()
    background: list[asyncio.Task[None]] = []

    def register(server: aio.Server) -> None:
        retriever_pb2_grpc.add_RetrieverServiceServicer_to_server(servicer, server)
        shard_pb2_grpc.add_ShardServiceServicer_to_server(ShardRelay(channel), server)

    async def load(_: RunningServer) -> None:
        background.append(asyncio.create_task(_stop_when_orphaned(parent)))
        if preload is not None:
            await asyncio.to_thread(loader, preload)
        await asyncio.to_thread(replicas.refresh)
        background.append(asyncio.create_task(_keep_refreshing(replicas)))
        _LOGGER.info("worker %d serving searches from %s", os.getpid(), data_dir)

    async def flush() -> None:
        for task in background:
            task.cancel()
        replicas.close()
        await channel.close(None)

    await serve_until_signal(
        options,
        register,
        [SERVICE_NAME, SHARD_SERVICE_NAME],
        load,
        flush,
        reuse_port=True,
        telemetry_name=TELEMETRY_NAME,
    )


async def _keep_refreshing(replicas: Replicas) -> None:
    """Follows the writer: new collections, new generations, deletions (``Replicas.refresh``)."""
    while True:
        await asyncio.sleep(_REFRESH_SECONDS)
        try:
            await asyncio.to_thread(replicas.refresh)
        except Exception:
            # Searches keep being relayed to the writer meanwhile; the next round tries again.
            _LOGGER.exception("this worker could not follow the writer's collections")


async def _stop_when_orphaned(parent: int) -> None:
    """A worker outliving its writer (killed with SIGKILL) would relay into the void: stop."""
    while os.getppid() == parent:
        await asyncio.sleep(_PARENT_CHECK_SECONDS)
    _LOGGER.error("the writer process %d is gone; this worker stops", parent)
    os.kill(os.getpid(), signal.SIGTERM)


class WorkerPool:
    """The writer's side: ``count`` worker processes kept running until ``stop``."""

    def __init__(
        self,
        count: int,
        data_dir: Path,
        limits: Limits,
        preload: EncoderSpec | None,
        cache_dir: Path,
        metrics_dir: Path | None = None,
    ) -> None:
        """``metrics_dir``: where the workers announce their metrics endpoints (None: no
        metrics are served)."""
        self.count = count
        self._metrics_dir = metrics_dir
        self._data_dir = data_dir
        self._limits = limits
        self._preload = preload
        self._cache_dir = cache_dir
        self._options = ServerOptions()
        self._context = multiprocessing.get_context("spawn")  # no forked grpc or torch state
        self._processes: list[BaseProcess] = []
        self._started: list[float] = []
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None
        self._writer_address = ""

    def start(self, options: ServerOptions, writer_port: int) -> None:
        """Spawns the workers; they bind ``options``' port and relay to ``writer_port``."""
        self._options = options
        self._writer_address = f"127.0.0.1:{writer_port}"
        self._processes = [self._spawn(slot) for slot in range(self.count)]
        self._started = [time.monotonic()] * self.count
        self._supervisor = asyncio.create_task(self._supervise())

    def _spawn(self, slot: int) -> BaseProcess:
        process = self._context.Process(
            target=run_worker,
            args=(
                self._data_dir,
                self._options,
                self._limits,
                self._preload,
                self._cache_dir,
                self._writer_address,
                logging.getLogger().level,
                self._metrics_dir,
            ),
            name=f"realm-worker-{slot}",
            daemon=True,
        )
        process.start()
        _LOGGER.info("started worker %d (pid %s)", slot, process.pid)
        return process

    async def _supervise(self) -> None:
        """Restarts dead workers; one that keeps dying young waits twice as long each time (up
        to a minute), so a worker that cannot start does not fill the log every second."""
        delays = [0.0] * self.count
        died: list[float | None] = [None] * self.count
        while not self._stopping:
            await asyncio.sleep(_RESTART_DELAY_SECONDS)
            now = time.monotonic()
            for slot, process in enumerate(self._processes):
                if process.is_alive() or self._stopping:
                    continue
                if died[slot] is None:
                    died[slot] = now
                    if process.pid is not None and self._metrics_dir is not None:
                        metrics.worker_gone(self._metrics_dir, process.pid)
                    young = now - self._started[slot] < _STABLE_SECONDS
                    delays[slot] = (
                        min(2 * delays[slot], _MAX_RESTART_DELAY_SECONDS)
                        if young and delays[slot]
                        else _RESTART_DELAY_SECONDS
                    )
                    _LOGGER.error(
                        "worker %d (pid %s) exited with code %s; starting another in %.0f s",
                        slot,
                        process.pid,
                        process.exitcode,
                        delays[slot],
                    )
                dead_since = died[slot]
                if dead_since is not None and now - dead_since >= delays[slot]:
                    self._processes[slot] = self._spawn(slot)
                    self._started[slot] = now
                    died[slot] = None

    async def stop(self, grace_seconds: float) -> None:
        """SIGTERM to every worker, then SIGKILL to any still running after the grace."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        for process in self._processes:
            if process.is_alive():
                process.terminate()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_seconds + 1.0  # a worker's drain is grace_seconds
        for process in self._processes:
            await asyncio.to_thread(process.join, max(0.0, deadline - loop.time()))
            if process.is_alive():
                _LOGGER.error("worker pid %s did not stop in time; killing it", process.pid)
                process.kill()
                await asyncio.to_thread(process.join)
        _LOGGER.info("stopped %d workers", len(self._processes))
