"""Runs ReaLM services as child processes: free ports, health waits, signals, logs.

``realm demo`` uses it to start real servers, and so do the tests, so both exercise the same
start-up and shutdown path an operator's process manager would.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port() -> int:
    """A loopback port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def health_status(target: str, timeout: float = 1.0) -> int | None:
    """The server's overall ``grpc.health.v1`` status, or None when it does not answer."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError:
            return None
        return int(response.status)


class ServiceProcess:
    """``realm serve SERVICE`` on a loopback port, its output appended to ``log_path``.

    ``module`` runs another program with the same ``serve SERVICE --port N`` arguments (the
    benchmarks' transport-floor server) under the same start, health and stop path.
    """

    def __init__(
        self,
        service: str,
        log_path: Path,
        *args: str,
        port: int | None = None,
        module: str = "realm.app.cli.main",
        env: Mapping[str, str] | None = None,
    ) -> None:
        """``env`` adds to (or overrides) this process's environment for the service."""
        self.service = service
        self.env = dict(env or {})
        self.module = module
        self.port = port or free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> "ServiceProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **self.env}
        command = [
            sys.executable,
            "-m",
            self.module,
            "serve",
            self.service,
            "--port",
            str(self.port),
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*command, *self.args], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def wait_serving(self, timeout: float = 300.0) -> "ServiceProcess":
        """Returns once health says SERVING; raises with the log if the process dies or stalls."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise RuntimeError(f"realm serve {self.service} exited ({code}):\n{self.log()}")
            if health_status(self.target) == health_pb2.HealthCheckResponse.SERVING:
                return self
            time.sleep(0.2)
        raise TimeoutError(
            f"realm serve {self.service} at {self.target} not serving after {timeout:.0f}s"
        )

    def signal(self, signum: signal.Signals) -> None:
        if self.process is not None:
            self.process.send_signal(signum)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.process is not None, "start() the process first"
        return self.process.wait(timeout)

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM and wait for the graceful drain (SIGKILL if it overruns); the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> Self:
        self.start()
        try:
            self.wait_serving()
        except BaseException:
            self.stop()  # a server that never served must not outlive its caller
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
