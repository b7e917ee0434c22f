"""Soak: a bounded mixed workload against real processes — writes, deletes, searches in every
mode from two threads, generations, index builds, a graceful restart and a SIGKILL — then
every acknowledged write is checked and the last server's memory and descriptors compared.

CI runs it for REALM_SOAK_SECONDS=120; ``make soak`` for 30 minutes. Figures go to the log
(``-s``) and into docs/operations.md by hand.
"""

import os
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from realm.client import Document, GeneratorClient, Mode, NotFound, RetrieverClient
from tests.servers import GeneratorProcess, RetrieverProcess, open_descriptors, resident_kib

pytestmark = pytest.mark.slow

SECONDS = float(os.environ.get("REALM_SOAK_SECONDS", "120"))
COLLECTION = "soak"
MODES: tuple[Mode, ...] = ("bm25", "dense", "hybrid")
# Past this many live documents writes stop and deletes take over, so that the index stays the
# same size and memory can be compared over a long run.
STEADY_DOCUMENTS = 1500
WARM_UP_OPERATIONS = 30  # a new server's caches fill before its resources are the baseline
WORDS = "tower river engine orbit signal harbor castle meadow glacier lantern".split()


def _text(doc_id: str, version: int, rng: random.Random) -> str:
    # A token of the document's own makes a BM25 presence check exact.
    filler = " ".join(rng.choice(WORDS) for _ in range(30))
    return f"Record {doc_id} v{version}: mark{doc_id}v{version}. {filler}."


def _resources(pid: int) -> tuple[int, int]:
    return resident_kib(pid), open_descriptors(pid)


class Ledger:
    """What the clients were told: live documents with their acknowledged version, and deletes."""

    def __init__(self) -> None:
        self.live: dict[str, int] = {}
        self.deleted: set[str] = set()

    def verify(self, client: RetrieverClient, sample: int | None, rng: random.Random) -> None:
        live = sorted(self.live)
        chosen = live if sample is None else rng.sample(live, min(sample, len(live)))
        for doc_id in chosen:
            assert f"v{self.live[doc_id]}:" in client.get(COLLECTION, doc_id).text, doc_id
        for doc_id in sorted(self.deleted)[: sample or None]:
            with pytest.raises(NotFound):
                client.get(COLLECTION, doc_id)


def test_mixed_workload_keeps_every_acknowledged_write_and_stays_flat(tmp_path: Path) -> None:
    rng = random.Random(7)
    ledger = Ledger()
    operations: Counter[str] = Counter()
    errors: list[str] = []
    server = RetrieverProcess(tmp_path / "data", "--compact-threshold", "400")
    paused = threading.Event()
    stop = threading.Event()

    def search_forever() -> None:
        """A second client searching all the time, but while the server is restarted."""
        search_rng = random.Random(11)
        with RetrieverClient(server.target, timeout=60) as reader:
            while not stop.is_set():
                if paused.is_set():
                    time.sleep(0.05)
                    continue
                mode = search_rng.choice(MODES)
                try:
                    reader.search(COLLECTION, search_rng.choice(WORDS), mode=mode, k=10)
                    operations[f"search {mode}"] += 1
                except Exception as error:  # recorded, and fails the test below
                    if not paused.is_set():
                        errors.append(f"search: {error!r}")

    with server, RetrieverClient(server.target, timeout=120) as client:
        client.create_collection(COLLECTION)
        assert server.process is not None
        with GeneratorProcess(tmp_path, server.target, "--max-new-tokens", "16") as generator:
            reader = threading.Thread(target=search_forever, daemon=True)
            reader.start()
            started = time.monotonic()
            restarts = {SECONDS / 3: signal.SIGTERM, 2 * SECONDS / 3: signal.SIGKILL}
            baseline: tuple[int, int] | None = None
            since_start = 0  # operations the current server process has served
            next_id = 0
            with GeneratorClient(generator.target, timeout=120) as asker:
                while (elapsed := time.monotonic() - started) < SECONDS:
                    due = [at for at in restarts if elapsed >= at]
                    if due:
                        kind = restarts.pop(due[0])
                        paused.set()
                        server.signal(kind)
                        server.wait()
                        server.start().wait_serving()
                        operations[f"restart {kind.name}"] += 1
                        ledger.verify(client, sample=50, rng=rng)
                        paused.clear()
                        baseline, since_start = None, 0  # measured again once warmed up
                        continue
                    growing = len(ledger.live) < STEADY_DOCUMENTS
                    action = rng.choices(
                        ["write", "replace", "delete", "ask", "compact"],
                        # Past the steady size, deletes (3 ids) outweigh writes (1-20 ids).
                        [50, 20, 15, 5, 2] if growing else [5, 20, 40, 5, 2],
                    )[0]
                    if action == "write":
                        batch = [f"d{next_id + i}" for i in range(rng.randint(1, 20))]
                        next_id += len(batch)
                        client.ingest(COLLECTION, [Document(d, _text(d, 1, rng)) for d in batch])
                        ledger.live.update(dict.fromkeys(batch, 1))
                    elif action == "replace" and ledger.live:
                        doc_id = rng.choice(sorted(ledger.live))
                        version = ledger.live[doc_id] + 1
                        client.upsert(COLLECTION, [Document(doc_id, _text(doc_id, version, rng))])
                        ledger.live[doc_id] = version
                    elif action == "delete" and ledger.live:
                        doomed = rng.sample(sorted(ledger.live), min(3, len(ledger.live)))
                        client.delete(COLLECTION, doomed)
                        for doc_id in doomed:
                            del ledger.live[doc_id]
                            ledger.deleted.add(doc_id)
                    elif action == "ask":
                        answer = asker.ask("Which tower?", COLLECTION, k=3)
                        assert answer.finish_reason in {"stop", "length", "stop_sequence"}
                    elif action == "compact":
                        client.compact(COLLECTION)
                    operations[action] += 1
                    since_start += 1
                    if since_start == WARM_UP_OPERATIONS:
                        baseline = _resources(server.process.pid)
            stop.set()
            reader.join(60)
        final = _resources(server.process.pid)
        ledger.verify(client, sample=None, rng=rng)
        stats = client.stats(COLLECTION)[0]
    assert errors == []
    assert stats.documents == len(ledger.live)
    assert operations["restart SIGTERM"] == operations["restart SIGKILL"] == 1
    assert baseline is not None
    print(  # the soak's figures, for docs/operations.md
        f"\nsoak {SECONDS:.0f}s: {dict(sorted(operations.items()))}; "
        f"{stats.documents} documents, generation {stats.generation}; last process "
        f"RSS {baseline[0] // 1024} -> {final[0] // 1024} MiB, descriptors {baseline[1]} -> "
        f"{final[1]}"
    )
    assert final[1] <= baseline[1] + 8, "descriptors grow"
    assert final[0] <= baseline[0] * 1.3 + 64 * 1024, "memory grows"
