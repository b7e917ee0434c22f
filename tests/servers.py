"""The services as real child processes, for tests (the same supervisor ``realm demo`` uses)."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from realm.app.supervisor import ServiceProcess, free_port, health_status

REPO = Path(__file__).resolve().parent.parent

__all__ = [
    "REPO",
    "GeneratorProcess",
    "RetrieverProcess",
    "StubRetriever",
    "health_status",
    "kill_realm_when_found",
    "open_descriptors",
    "resident_kib",
]


def resident_kib(pid: int) -> int:
    """Resident memory of process ``pid`` in KiB, as the kernel reports it (VmRSS)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))


def kill_realm_when_found(args: list[str], root: Path, pattern: str) -> list[Path]:
    """Runs ``realm ARGS`` until a file matching ``pattern`` appears under ``root``, then kills
    it with SIGKILL: the files found (none when it ended or 300 s passed first)."""
    quiet = subprocess.DEVNULL  # a full pipe would stall the command
    command = [sys.executable, "-m", "realm.app.cli.main", *args]
    process = subprocess.Popen(command, cwd=REPO, stdout=quiet, stderr=quiet)
    deadline = time.monotonic() + 300
    found: list[Path] = []
    while time.monotonic() < deadline and not found and process.poll() is None:
        found = list(root.glob(pattern))
        time.sleep(0.2)
    process.kill()  # SIGKILL; nothing when it has already ended
    process.wait()
    return found


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class RetrieverProcess(ServiceProcess):
    """``realm serve retriever --data-dir DIR`` with its log beside the data directory."""

    def __init__(
        self,
        data_dir: Path,
        *extra: str,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        port = port or free_port()
        super().__init__(
            "retriever",
            data_dir.parent / f"retriever-{port}.log",
            "--data-dir",
            str(data_dir),
            *extra,
            port=port,
            env=env,
        )
        self.data_dir = data_dir


class GeneratorProcess(ServiceProcess):
    """``realm serve generator --retriever TARGET`` with the packaged default model."""

    def __init__(
        self,
        log_dir: Path,
        retriever_target: str,
        *extra: str,
        env: Mapping[str, str] | None = None,
    ) -> None:
        port = free_port()
        super().__init__(
            "generator",
            log_dir / f"generator-{port}.log",
            "--retriever",
            retriever_target,
            *extra,
            port=port,
            env=env,
        )


class StubRetriever:
    """``tests/stub_retriever.py`` on a fixed port: real gRPC, scripted delay, killable."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.record = workdir / f"stub-{port}.txt"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, delay: float) -> None:
        self.record.unlink(missing_ok=True)
        self.record.with_suffix(".ready").unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.stub_retriever",
                "--port",
                str(self.port),
                "--delay",
                str(delay),
                "--record",
                str(self.record),
            ],
            cwd=REPO,
        )
        deadline = time.monotonic() + 30
        while not self.record.with_suffix(".ready").exists():
            assert time.monotonic() < deadline, "the stub retriever did not start"
            assert self.process.poll() is None, "the stub retriever exited"
            time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def deadlines_seen(self) -> list[float]:
        return [float(line) for line in self.record.read_text().split() if line != "none"]
